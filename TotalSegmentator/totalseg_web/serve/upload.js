// Upload the chosen file to this session's "upload" route (streamed to disk, size-checked on the server), then
// tell the session to open it. The route is relative: behind the launcher the page lives under /s/<session>/.
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
    answer = await response.json();
  } catch (error) {
    answer = { error: `The upload failed: ${error}` };
  }
  input.value = "";
  await trame.trigger("totalseg_uploaded", [answer]);
};
