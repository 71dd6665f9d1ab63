// The playground: posts the script to /execute on this origin and shows the answer's parts
// apart. Loaded as a file of its own so the page's Content-Security-Policy can refuse inline code.
"use strict";

const $ = (id) => document.getElementById(id);

function clear() {
  for (const id of ["result", "stdout", "error-code", "error-message", "traceback"])
    $(id).textContent = "";
  $("http").textContent = "–";
  $("time").textContent = "–";
  $("error-box").hidden = true;
  $("truncated").hidden = true;
}

function showError(code, message, traceback) {
  $("error-box").hidden = false;
  $("error-code").textContent = code;
  $("error-message").textContent = message;
  $("traceback").textContent = traceback || "";
}

function show(resp, text) {
  let body = null;
  try {
    body = JSON.parse(text);
  } catch (e) {
    // shown below as an unexpected answer
  }
  $("http").textContent = `${resp.status} ${resp.statusText}`.trim();
  const ms = resp.headers.get("X-Execution-Time-Ms");
  $("time").textContent = ms === null ? "–" : `${ms} ms`;
  $("truncated").hidden = resp.headers.get("X-Stdout-Truncated") !== "true";
  if (body && resp.ok && "result" in body) {
    $("result").textContent = JSON.stringify(body.result, null, 2);
    $("stdout").textContent = body.stdout;
  } else if (body && typeof body.error === "string") {
    $("stdout").textContent = body.stdout || "";
    showError(body.error, body.message, body.traceback);
  } else {
    showError("unexpected_answer", text.slice(0, 2000), "");
  }
}

async function run(event) {
  event.preventDefault();
  const request = { script: $("script").value };
  const timeout = $("timeout").value.trim();
  if (timeout !== "") request.timeout = Number(timeout);
  clear();
  $("run").disabled = true;
  $("status").dataset.state = "running";
  $("status").textContent = "running…";
  try {
    const resp = await fetch("/execute", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(request),
    });
    show(resp, await resp.text());
  } catch (e) {
    showError("network_error", String(e), "");
  } finally {
    $("run").disabled = false;
    $("status").dataset.state = "done";
    $("status").dataset.runs = String(Number($("status").dataset.runs) + 1);
    $("status").textContent = "";
  }
}

// Tab indents (Python needs it) instead of leaving the editor; Ctrl+Enter runs.
function key(event) {
  if (event.key === "Tab" && !event.shiftKey && !event.ctrlKey && !event.altKey) {
    event.preventDefault();
    document.execCommand("insertText", false, "    ");
  } else if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    $("form").requestSubmit();
  }
}

$("form").addEventListener("submit", run);
$("script").addEventListener("keydown", key);
