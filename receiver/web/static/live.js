// Live pages: follow /api/events (server-sent events, one `job` event per change of a
// job), and bring the page's changed parts in from a fresh copy of the page, so the
// server renders every version of a page.
import { refreshTimes } from "./time.js";

const root = document.body.dataset.root || "";
const indicator = document.getElementById("live-state");

function say(text, kind) {
  if (!indicator) return;
  indicator.hidden = false;
  indicator.textContent = text;
  indicator.className = `live-state ${kind}`;
}

// Calls onJob(job) for each job event. The browser reconnects by itself after a dropped
// connection, sending the last event's id; after a refusal it gives up, and this opens
// the stream again, later each time, resuming after the last event seen.
export function follow(query, onJob) {
  let lastId = null;
  let delay = 1000;
  let source = null;
  let timer = null;
  function open() {
    const params = new URLSearchParams(query);
    if (lastId !== null) params.set("last_event_id", lastId);
    const search = params.toString();
    source = new EventSource(`${root}/api/events${search ? `?${search}` : ""}`);
    source.addEventListener("open", () => {
      delay = 1000;
      say("Live", "connected");
    });
    source.addEventListener("job", (event) => {
      if (event.lastEventId) lastId = event.lastEventId;
      let job;
      try {
        job = JSON.parse(event.data);
      } catch {
        return;
      }
      onJob(job);
    });
    source.addEventListener("error", () => {
      say("Reconnecting…", "waiting");
      if (source.readyState === EventSource.CLOSED) {
        source.close();
        timer = setTimeout(open, delay);
        delay = Math.min(delay * 2, 30000);
      }
    });
  }
  open();
  window.addEventListener("pagehide", () => {
    clearTimeout(timer);
    if (source) source.close();
  });
}

// A function that fetches the page again soon (at most one fetch at a time, and one
// more if asked meanwhile) and hands the fresh document to apply(doc).
export function refresher(apply, wait = 200) {
  let timer = null;
  let running = false;
  let again = false;
  async function run() {
    timer = null;
    if (running) {
      again = true;
      return;
    }
    running = true;
    try {
      const response = await fetch(window.location.href, {
        credentials: "same-origin",
        cache: "no-store",
        headers: { Accept: "text/html" },
      });
      if (response.ok && !response.redirected) {
        const doc = new DOMParser().parseFromString(await response.text(), "text/html");
        apply(doc);
        refreshTimes();
      }
    } catch {
      // The next event asks again.
    } finally {
      running = false;
      if (again) {
        again = false;
        schedule();
      }
    }
  }
  function schedule() {
    if (timer === null) timer = setTimeout(run, wait);
  }
  return schedule;
}

// Puts the fresh document's element with this id in place of the current one, unless
// both carry the same data-version (a playing video is left alone).
export function swap(doc, id) {
  const current = document.getElementById(id);
  const fresh = doc.getElementById(id);
  if (!current || !fresh) return;
  if (current.dataset.version && current.dataset.version === fresh.dataset.version) return;
  current.replaceWith(document.importNode(fresh, true));
}

// Makes the container's children those of the fresh one, by data-job-id: an unchanged
// item (same data-version) keeps its element, a new or changed one is marked fresh.
export function reconcile(container, freshContainer) {
  if (!container || !freshContainer) return;
  const current = new Map();
  for (const item of container.children) current.set(item.dataset.jobId, item);
  const items = [];
  for (const item of freshContainer.children) {
    const old = current.get(item.dataset.jobId);
    if (old && old.dataset.version === item.dataset.version) {
      items.push(old);
      continue;
    }
    const made = document.importNode(item, true);
    made.classList.add("fresh");
    items.push(made);
  }
  container.replaceChildren(...items);
}
