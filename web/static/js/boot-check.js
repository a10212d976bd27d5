// Classic (non-module) script: if the ES modules failed to load (for example the vendored
// libraries are missing), say so instead of leaving "Loading…" on screen.
window.addEventListener('load', function () {
  setTimeout(function () {
    if (window.__chatBooted) return;
    var box = document.getElementById('boot-error');
    var loading = document.getElementById('boot-loading');
    if (loading) loading.hidden = true;
    if (box) {
      box.textContent = 'The chat page could not load its scripts. ' +
        'If you run the server, install them with: python -m scripts.vendor_js --install';
      box.hidden = false;
    }
  }, 3000);
});
