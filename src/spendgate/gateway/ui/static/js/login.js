// Shows why the login page came back (?error=1, ?error=key, ?error=rate, ?error=expired).
const MESSAGES = {
  "1": "That token is not the admin token.",
  key: "That is a virtual key: only the gateway's admin token logs in here.",
  rate: "Too many failed attempts: wait a minute and try again.",
  expired: "The session ended: log in again.",
};
const error = new URLSearchParams(window.location.search).get("error");
if (error !== null) {
  const el = document.getElementById("error");
  el.textContent = MESSAGES[error] || "Log in failed.";
  el.hidden = false;
}
