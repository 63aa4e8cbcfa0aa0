// Times shown relative ("4 min ago") and kept current; hovering shows the exact time,
// in the reader's own time zone and in UTC.
const UNITS = [[31536000, "y"], [86400, "days"], [3600, "h"], [60, "min"]];

export function relative(moment, now) {
  let seconds = (now - moment) / 1000;
  const future = seconds < 0;
  seconds = Math.abs(seconds);
  if (seconds < 5) return "just now";
  let text = `${Math.floor(seconds)} s`;
  for (const [size, unit] of UNITS) {
    if (seconds >= size) {
      const count = Math.floor(seconds / size);
      text = `${count} ${unit === "days" && count === 1 ? "day" : unit}`;
      break;
    }
  }
  return future ? `in ${text}` : `${text} ago`;
}

export function refreshTimes(scope = document) {
  const now = Date.now();
  for (const element of scope.querySelectorAll("time[data-relative]")) {
    const moment = new Date(element.dateTime);
    if (Number.isNaN(moment.getTime())) continue;
    element.textContent = relative(moment, now);
    if (!element.dataset.local) {
      element.dataset.local = "yes";
      element.title = `${moment.toLocaleString()} (${element.title})`;
    }
  }
}

refreshTimes();
setInterval(refreshTimes, 15000);
