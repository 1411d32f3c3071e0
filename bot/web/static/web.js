// Optional: the page works without it. It adds the phone's location, commune suggestions
// (the same server-side search) and the print button. No third party, no tracking.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("button.print").forEach(function (button) {
    button.hidden = false;
    button.addEventListener("click", function () { window.print(); });
  });
  if (navigator.geolocation) {
    document.querySelectorAll("button.locate").forEach(function (button) {
      var form = button.form;
      var status = form.querySelector(".geo-status");
      button.hidden = false;
      button.addEventListener("click", function () {
        navigator.geolocation.getCurrentPosition(function (position) {
          form.querySelector("[data-geo=lat]").value = position.coords.latitude.toFixed(6);
          form.querySelector("[data-geo=lon]").value = position.coords.longitude.toFixed(6);
          status.textContent = button.dataset.located;
        }, function () { status.textContent = button.dataset.failed; },
        { enableHighAccuracy: true, timeout: 15000 });
      });
    });
  }
  document.querySelectorAll("input[data-suggest]").forEach(function (input) {
    var list = document.getElementById(input.getAttribute("list"));
    var timer = null;
    input.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(function () {
        if (input.value.trim().length < 2) { return; }
        fetch(input.dataset.suggest + "?q=" + encodeURIComponent(input.value), { credentials: "omit" })
          .then(function (r) { return r.ok ? r.json() : []; })
          .then(function (items) {
            list.replaceChildren();
            items.forEach(function (item) {
              var option = document.createElement("option");
              option.value = item.name;
              list.appendChild(option);
            });
          }).catch(function () {});
      }, 250);
    });
  });
});
