// The job list, live: each change of a job brings the list and the counts up to date.
import { follow, reconcile, refresher, swap } from "./live.js";

const list = document.getElementById("jobs");
if (list) {
  const refresh = refresher((doc) => {
    swap(doc, "counts");
    swap(doc, "empty-note");
    reconcile(list.querySelector("[data-items]"), doc.querySelector("#jobs [data-items]"));
  });
  follow({}, () => refresh());
}
