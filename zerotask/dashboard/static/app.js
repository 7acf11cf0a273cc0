// The zerotask dashboard. Everything the broker returns (task ids, arguments, errors) may be hostile:
// it reaches the page through textContent only, never innerHTML.
"use strict";

const FINAL = new Set(["FINISHED", "FAILED", "REVOKED"]);
const MAX_RECENT = 50;
const recent = new Map(); // task_id -> {task_id, method, state, at}, oldest first
let history = [];
let failedTimer = null;
let failedSeen = null; // the FAILED count of the last overview

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  return node;
}

function row(cells) {
  const tr = el("tr");
  for (const cell of cells) {
    const td = cell instanceof Node ? el("td") : el("td", cell);
    if (cell instanceof Node) td.append(cell);
    tr.append(td);
  }
  return tr;
}

function fill(tableId, rows) {
  document.querySelector(`#${tableId} tbody`).replaceChildren(...rows);
}

function taskLink(taskId) {
  const link = el("a", taskId, { href: "/task/" + encodeURIComponent(taskId), "data-route": "", class: "task-link" });
  return link;
}

function stateCell(state) {
  return el("span", state, { class: `state ${state}` });
}

function ago(seconds) {
  if (seconds === null || seconds === undefined) return "";
  return seconds < 1 ? "now" : seconds < 120 ? `${Math.round(seconds)} s ago` : `${Math.round(seconds / 60)} min ago`;
}

function clock(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "number") return new Date(value > 1e12 ? value : value * 1000).toLocaleTimeString();
  return String(value);
}

function button(label, onClick, cls) {
  const node = el("button", label, { type: "button", class: cls || "" });
  node.addEventListener("click", onClick);
  return node;
}

async function post(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-Zerotask": "1" },
    body: JSON.stringify(body),
  });
  const answer = await response.json();
  if (!response.ok) throw new Error(answer.error || response.statusText);
  return answer;
}

async function getJSON(path) {
  const response = await fetch(path);
  const answer = await response.json();
  if (!response.ok) throw new Error(answer.error || response.statusText);
  return answer;
}

function act(promise, after) {
  promise.then(after, (error) => showStatus(`failed: ${error.message}`, true));
}

function retry(taskId) {
  const clicked = Date.now() / 1000;
  act(post("/api/retry", { task_id: taskId }), (state) => {
    // The task may have run and ended already: an event newer than the click wins over this answer.
    const known = recent.get(taskId);
    if (!known || (known.at || 0) <= clicked) noteTask({ task_id: taskId, state: state });
    refreshFailed();
    if (location.pathname.startsWith("/task/")) showTask(taskId);
  });
}

function revoke(taskId) {
  act(post("/api/revoke", { task_id: taskId }), (state) => {
    noteTask({ task_id: taskId, state: state });
    if (location.pathname.startsWith("/task/")) showTask(taskId);
  });
}

function purge(method) {
  if (!confirm(`Purge every queued "${method}" task?`)) return;
  act(post("/api/purge", { method: method }), (answer) =>
    showStatus(`purged ${answer.purged} ${method} task(s)${answer.more ? ", more remain" : ""}`));
}

function showStatus(text, bad) {
  const status = document.getElementById("status");
  status.textContent = text;
  status.classList.toggle("bad", !!bad);
}

// ---- the overview ----------------------------------------------------------------------------

function renderInspect(inspect) {
  if (!inspect) return;
  fill("nodes", (inspect.nodes || []).map((n) =>
    row([n.name, n.workers, n.busy ?? "", n.finished ?? "", n.last_seen_s === null || n.last_seen_s === undefined ? "" : ago(n.last_seen_s)])));
  fill("queues", (inspect.queues || []).map((q) =>
    row([q.name, q.depth, q.oldest_s === null || q.oldest_s === undefined ? "" : ago(q.oldest_s), button("purge", () => purge(q.name), "purge")])));
  const states = document.getElementById("states");
  states.replaceChildren(...Object.entries(inspect.states || {}).map(([state, n]) => {
    const badge = el("span", `${state} ${n}`, { class: state });
    return badge;
  }));
}

function noteTask(event) {
  const known = recent.get(event.task_id) || { task_id: event.task_id, method: "" };
  recent.delete(event.task_id);
  recent.set(event.task_id, { ...known, method: event.method || known.method, state: event.state || known.state, at: event.at || Date.now() / 1000 });
  while (recent.size > MAX_RECENT) recent.delete(recent.keys().next().value);
  renderRecent();
}

function renderRecent() {
  const rows = [...recent.values()].reverse().map((t) =>
    row([taskLink(t.task_id), t.method, stateCell(t.state), clock(t.at), FINAL.has(t.state) ? "" : button("revoke", () => revoke(t.task_id), "revoke")]));
  fill("recent", rows);
}

function refreshFailed() {
  getJSON("/api/tasks?state=FAILED&limit=20").then((tasks) => {
    fill("failed", tasks.map((t) => row([
      taskLink(t.task_id), t.method, t.attempts,
      Object.assign(el("span", errorText(t.error)), {}), clock(t.finished_at),
      button("retry", () => retry(t.task_id), "retry"),
    ])));
  }, (error) => fill("failed", [row([`unavailable: ${error.message}`])]));
}

function refreshFailedSoon() {
  if (failedTimer === null) failedTimer = setTimeout(() => { failedTimer = null; refreshFailed(); }, 500);
}

function errorText(error) {
  if (error === null || error === undefined) return "";
  if (typeof error !== "object") return String(error);
  const data = error.data && typeof error.data === "object" ? error.data : {};
  return [data.type, data.message || error.message].filter(Boolean).join(": ");
}

function drawChart() {
  const canvas = document.getElementById("chart");
  const width = canvas.clientWidth || canvas.width;
  canvas.width = width;
  const height = canvas.height;
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, width, height);
  const points = history.slice(-600);
  const top = Math.max(1, ...points.map((p) => p.finished_per_s || 0));
  const latencyTop = Math.max(0.001, ...points.map((p) => p.latency_s || 0));
  const x = (i) => 40 + (i / Math.max(1, points.length - 1)) * (width - 50);
  context.fillStyle = "#667";
  context.font = "11px system-ui";
  context.fillText(`${top.toFixed(1)}/s`, 2, 12);
  context.fillText("0", 2, height - 4);
  context.fillText(`${latencyTop.toFixed(2)} s`, width - 48, 12);
  context.strokeStyle = "#1d5fb4";
  context.lineWidth = 1.5;
  context.beginPath();
  points.forEach((p, i) => {
    const y = height - 8 - ((p.finished_per_s || 0) / top) * (height - 20);
    if (i === 0) context.moveTo(x(i), y); else context.lineTo(x(i), y);
  });
  context.stroke();
  context.fillStyle = "#b26a00";
  points.forEach((p, i) => {
    if (p.latency_s === null || p.latency_s === undefined) return;
    context.fillRect(x(i) - 1.5, height - 8 - (p.latency_s / latencyTop) * (height - 20) - 1.5, 3, 3);
  });
}

// ---- one task --------------------------------------------------------------------------------

function showTask(taskId) {
  document.getElementById("overview").hidden = true;
  document.getElementById("task").hidden = false;
  document.getElementById("task-id").textContent = taskId;
  getJSON("/api/task/" + encodeURIComponent(taskId)).then(renderTask, (error) => {
    document.getElementById("task-fields").replaceChildren(el("dt", "error"), el("dd", error.message));
  });
}

function renderTask(t) {
  const fields = [
    ["state", stateCell(t.state)], ["method", t.method], ["attempts", t.attempts],
    ["created", clock(t.created_at)], ["finished", clock(t.finished_at)], ["node", t.node || ""],
  ];
  document.getElementById("task-fields").replaceChildren(...fields.flatMap(([name, value]) => {
    const dd = el("dd");
    if (value instanceof Node) dd.append(value); else dd.textContent = String(value ?? "");
    return [el("dt", name), dd];
  }));
  document.getElementById("task-args").textContent = JSON.stringify({ args: t.args, kwargs: t.kwargs }, null, 2);
  const failed = t.error !== undefined && t.error !== null;
  document.getElementById("task-outcome-title").textContent = failed ? "Error" : "Result";
  const data = failed && t.error && typeof t.error.data === "object" && t.error.data ? t.error.data : {};
  document.getElementById("task-outcome").textContent = failed
    ? [errorText(t.error), data.traceback || ""].filter(Boolean).join("\n\n")
    : JSON.stringify(t.result ?? null, null, 2);
  const actions = [];
  if (t.state === "FAILED" || t.state === "REVOKED") actions.push(button("retry", () => retry(t.task_id), "retry"));
  if (!FINAL.has(t.state)) actions.push(button("revoke", () => revoke(t.task_id), "revoke"));
  document.getElementById("task-actions").replaceChildren(...actions);
}

function showOverview() {
  document.getElementById("task").hidden = true;
  document.getElementById("overview").hidden = false;
  refreshFailed();
  drawChart();
}

function route() {
  const path = location.pathname;
  if (path.startsWith("/task/")) showTask(decodeURIComponent(path.slice("/task/".length)));
  else showOverview();
}

document.addEventListener("click", (event) => {
  const link = event.target.closest && event.target.closest("a[data-route]");
  if (!link || event.ctrlKey || event.metaKey || event.shiftKey) return;
  event.preventDefault();
  history_push(link.getAttribute("href"));
});

function history_push(path) {
  window.history.pushState(null, "", path);
  route();
}

window.addEventListener("popstate", route);

// ---- the live stream -------------------------------------------------------------------------

function onMessage(message) {
  if (message.type === "snapshot") {
    renderInspect(message.inspect);
    history = message.history || [];
    recent.clear();
    for (const event of message.events || []) noteTask(event);
    renderRecent();
    drawChart();
    showStatus(message.error ? `broker: ${message.error}` : "live", !!message.error);
  } else if (message.type === "inspect") {
    renderInspect(message.inspect);
    // The failed list follows the count too: an event missed while the page connected must not hide a failure.
    const failedNow = ((message.inspect || {}).states || {}).FAILED || 0;
    if (failedNow !== failedSeen) { failedSeen = failedNow; refreshFailedSoon(); }
    history.push(message.point);
    if (history.length > 600) history.shift();
    if (!document.getElementById("overview").hidden) drawChart();
    showStatus(message.error ? `broker: ${message.error}` : "live", !!message.error);
  } else if (message.type === "event") {
    noteTask(message);
    if (message.state === "FAILED" || message.event === "queued") refreshFailedSoon();
  }
}

function connect() {
  const source = new EventSource("/events");
  source.onmessage = (event) => onMessage(JSON.parse(event.data));
  source.onerror = () => showStatus("disconnected: reconnecting…", true); // EventSource reconnects by itself
}

route();
connect();
