// Ask before destructive forms (remove a server, revoke a key, unsubscribe).
// A file of its own because the Content-Security-Policy allows no inline script.
document.addEventListener("submit", (event) => {
  const form = event.target.closest("form[data-confirm]");
  if (form && !window.confirm(form.dataset.confirm)) {
    event.preventDefault();
  }
});
