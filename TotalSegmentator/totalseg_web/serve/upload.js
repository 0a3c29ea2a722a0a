// Upload the chosen file to this session's "upload" route (streamed to a staging folder, size-checked on the
// server), then tell the session to open it (the answer names the staged upload). The route is relative: behind
// the launcher the page lives under /s/<session>/.
window.totalsegUpload = async function totalsegUpload(input) {
  const file = input.files && input.files[0];
  if (!file) {
    return;
  }
  const trame = window.trame;
  if (file.size > trame.state.get("max_upload_mb") * 1048576) {
    input.value = "";
    await trame.trigger("totalseg_uploaded", [{ too_large: file.size, name: file.name }]);
    return;
  }
  trame.state.set("busy_loading", true);
  trame.state.set("error_message", "");
  trame.state.set("status_message", `Uploading ${file.name} (${(file.size / 1e6).toFixed(1)} MB)`);
  let answer;
  try {
    const form = new FormData();
    form.append("file", file, file.name);
    const response = await fetch("upload", { method: "POST", body: form });
    answer = await readAnswer(response);
  } catch (error) {
    answer = { error: `The upload failed: ${error}` };
  }
  input.value = "";
  await trame.trigger("totalseg_uploaded", [answer]);
};

// The session answers JSON ({name, upload} or {error}); anything else (the launcher's plain-text 401, a proxy's
// error page) becomes an error with its text.
async function readAnswer(response) {
  const text = await response.text();
  try {
    return JSON.parse(text);
  } catch (error) {
    return { error: `The upload failed (${response.status}): ${text.slice(0, 300)}` };
  }
}
