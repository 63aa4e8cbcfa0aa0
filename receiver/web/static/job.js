// A job's page, live: its changes come in without a reload; the player is replaced only
// when the kept copy changes.
import { follow, refresher, swap } from "./live.js";

const SECTIONS = ["job-head", "player", "facts", "stages", "timeline", "callbacks", "deliveries"];
const article = document.querySelector("article.job");
if (article) {
  const id = article.dataset.jobId;
  const refresh = refresher((doc) => {
    for (const section of SECTIONS) swap(doc, section);
    const fresh = doc.querySelector("article.job");
    if (fresh) article.dataset.status = fresh.dataset.status;
    document.title = doc.title;
  });
  follow({ job: id }, (job) => {
    if (job.id === id) refresh();
  });
}
