/* "Me localiser" on "Où utiliser ma carte ?": asks the browser for its position, puts it in the
   hidden fields of the position form (rounded to about 100 m: enough to sort shops, no more),
   copies the chosen category and distance, and submits by POST so that the position never sits
   in a URL. Without geolocation the button stays hidden and the town search is all there is. */
(function () {
  "use strict";
  var DECIMALS = 3;                 // 0.001 degree: about 100 m
  var TIMEOUT_MS = 15000;           // how long the browser may look for the position
  var MAX_AGE_MS = 300000;          // a position up to 5 minutes old is good enough
  var form = document.getElementById("localisation");
  var search = document.getElementById("recherche");
  if (!form || !search || !("geolocation" in navigator)) {
    return;
  }
  var button = document.getElementById("me-localiser");
  var status = document.getElementById("localisation-etat");
  form.hidden = false;
  button.addEventListener("click", function () {
    button.disabled = true;
    status.textContent = "Recherche de votre position…";
    navigator.geolocation.getCurrentPosition(function (position) {
      form.elements.latitude.value = position.coords.latitude.toFixed(DECIMALS);
      form.elements.longitude.value = position.coords.longitude.toFixed(DECIMALS);
      form.elements.categorie.value = search.elements.categorie.value;
      form.elements.rayon.value = search.elements.rayon.value;
      form.submit();
    }, function (error) {
      button.disabled = false;
      status.textContent = error.code === error.PERMISSION_DENIED
        ? "Vous n'avez pas autorisé la localisation : indiquez votre ville ou votre code postal."
        : "Votre position n'a pas été trouvée : indiquez votre ville ou votre code postal.";
    }, {timeout: TIMEOUT_MS, maximumAge: MAX_AGE_MS});
  });
}());
