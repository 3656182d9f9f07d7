// patchflow serve: the page. Submit a job, poll its progress, play the result, keep a gallery.
"use strict";

const $ = (id) => document.getElementById(id);
const POLL_MS = 400;
const MAX_POLLS = 9000;  // an hour of polling at most, then the page stops asking
const NUMBER_FIELDS = ["width", "height", "num_frames", "steps", "guidance_scale", "seed"];
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function getHealth() {
  const health = await (await fetch("/api/health")).json();
  $("health").textContent = `model loaded, ${health.queue_length} job(s) in the queue`;
  return health;
}

// Fill the defaults and limits from the server (the model's trained size, the --max-* options).
async function init() {
  try {
    const health = await getHealth();
    const d = health.defaults, lim = health.limits, rules = health.rules;
    for (const key of ["width", "height", "num_frames", "steps", "guidance_scale"]) $(key).value = d[key];
    $("width").step = $("width").min = rules.size_multiple[1];
    $("height").step = $("height").min = rules.size_multiple[0];
    $("width").max = $("height").max = lim.max_size;
    $("num_frames").step = rules.frames_step;  // with min: the valid counts first + step k
    $("num_frames").min = rules.frames_first;
    $("num_frames").max = lim.max_frames;
    $("steps").max = lim.max_steps;
  } catch (err) {
    $("health").textContent = "the server does not answer";
  }
  showTask();
}

function showTask() {
  const task = $("task").value;
  for (const el of document.querySelectorAll(".task")) el.hidden = !el.dataset.tasks.split(" ").includes(task);
}

// The form as the API's multipart fields: only what the chosen task uses; blanks are left out.
function formData() {
  const data = new FormData(), task = $("task").value;
  data.append("prompt", $("prompt").value);
  if ($("negative_prompt").value) data.append("negative_prompt", $("negative_prompt").value);
  for (const key of NUMBER_FIELDS) if ($(key).value !== "") data.append(key, $(key).value);
  const file = (id) => {
    if (!$(id).files[0]) throw { field: id, error: `choose a file for ${id.replace("_", " ")}` };
    data.append(id, $(id).files[0]);
  };
  if (task === "image") file("image");
  if (task !== "text" && task !== "image") file("video");
  if (task === "extend") data.append("extend", $("extend").value);
  if (task === "connect") file("end_video");
  if (task === "edit") data.append("strength", $("strength").value);
  if (!$("loop").closest(".task").hidden && $("loop").checked) data.append("loop", "true");
  return data;
}

function showError(field, message) {
  $("error").textContent = message;
  $("error").hidden = false;
  const input = $(field);
  if (input) { input.classList.add("invalid"); input.focus(); }
}

function clearError() {
  $("error").hidden = true;
  for (const el of document.querySelectorAll(".invalid")) el.classList.remove("invalid");
}

async function generate(event) {
  event.preventDefault();
  clearError();
  let data;
  try { data = formData(); } catch (err) { showError(err.field, err.error); return; }
  $("generate").disabled = true;
  try {
    const res = await fetch("/api/jobs", { method: "POST", body: data });
    const job = await res.json();
    if (!res.ok) { showError(job.field, job.error || res.statusText); return; }
    await follow(job);
  } catch (err) {
    showError(null, `request failed: ${err}`);
  } finally {
    $("generate").disabled = false;
    getHealth().catch(() => {});
  }
}

// Poll the job until it is done, moving the progress bar with the sampler's steps.
async function follow(job) {
  const bar = $("progress");
  bar.hidden = false;
  for (let i = 0; i < MAX_POLLS; i++) {
    bar.max = job.total_steps;
    bar.value = job.step;
    if (job.status === "queued") $("status").textContent = `waiting: ${job.position} job(s) ahead`;
    if (job.status === "running") $("status").textContent = `generating: step ${job.step} of ${job.total_steps}`;
    if (job.status === "done") { bar.hidden = true; show(job); addToGallery(job); return; }
    if (job.status === "error") { bar.hidden = true; $("status").textContent = "failed"; showError(null, job.error); return; }
    await sleep(POLL_MS);
    const res = await fetch(`/api/jobs/${job.id}`);
    if (!res.ok) { showError(null, (await res.json()).error); return; }
    job = await res.json();
  }
  $("status").textContent = "still not done; stopped asking";
}

function describe(job) {
  return `${job.task}, ${job.width}x${job.height}, ${job.num_frames} frames, seed ${job.seed}` +
         (job.seconds !== undefined ? `, ${job.seconds.toFixed(1)} s` : "");
}

function show(job) {
  const url = `/api/jobs/${job.id}/video`;
  $("status").textContent = `"${job.prompt}"`;
  $("player").src = url;
  $("player").hidden = false;
  showUnknownWords(job.unknown_words || []);
  $("caption").textContent = describe(job);
  $("download").href = url;
  $("download").download = `patchflow-${job.id.slice(0, 8)}.mp4`;
  $("details").hidden = false;
}

// Words of the prompt the model's world cannot place: the video was made anyway, so say so under it.
function showUnknownWords(words) {
  $("notice").textContent = words.length ? `Not understood by the Shapes World model: ${words.join(", ")}. ` +
                                           "The video still follows the words it knows." : "";
  $("notice").hidden = !words.length;
}

function addToGallery(job) {
  const figure = document.createElement("figure");
  const video = document.createElement("video");
  Object.assign(video, { src: `/api/jobs/${job.id}/video`, muted: true, loop: true, autoplay: true, playsInline: true });
  const caption = document.createElement("figcaption");
  caption.textContent = job.prompt;
  caption.title = describe(job);
  figure.append(video, caption);
  figure.addEventListener("click", () => show(job));
  $("gallery").prepend(figure);
  $("gallery-section").hidden = false;
}

document.addEventListener("DOMContentLoaded", () => {
  $("task").addEventListener("change", showTask);
  $("strength").addEventListener("input", () => { $("strength_value").textContent = $("strength").value; });
  $("form").addEventListener("submit", generate);
  init();
});
