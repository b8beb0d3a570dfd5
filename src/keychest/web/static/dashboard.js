// Destructive forms (remove a server, revoke a key, unsubscribe) go to a server-rendered
// "are you sure?" page. With script, the question is asked here instead, and the answer
// goes along so the server acts at once. A file of its own: the Content-Security-Policy
// allows no inline script.
document.addEventListener("submit", (event) => {
  const form = event.target.closest("form[data-confirm]");
  if (!form) {
    return;
  }
  if (!window.confirm(form.dataset.confirm)) {
    event.preventDefault();
    return;
  }
  if (!form.querySelector("input[name=confirmed]")) {
    const flag = document.createElement("input");
    flag.type = "hidden";
    flag.name = "confirmed";
    flag.value = "yes";
    form.appendChild(flag);
  }
});
