/* The console's only script (served from our origin; the CSP allows no inline script).
 *
 * Live job status: a container marked data-job-poll="<status url>" holds cells marked
 * data-job-id / data-job-status. While any of them is queued or running, the page asks the status
 * URL every few seconds (header X-KMS-Poll, so polling does not count as activity for the idle
 * timeout) and reloads itself when a status changed, so the page shows the job's outcome.
 */
(function () {
  "use strict";

  var ACTIVE = ["queued", "running"];
  var MAX_POLLS = 300;

  function watch(container) {
    var url = container.getAttribute("data-job-poll");
    var cells = Array.prototype.slice.call(container.querySelectorAll("[data-job-id][data-job-status]"));
    var active = cells.filter(function (cell) {
      return ACTIVE.indexOf(cell.getAttribute("data-job-status")) !== -1;
    });
    if (!url || active.length === 0) {
      return;
    }
    var params = new URLSearchParams();
    active.forEach(function (cell) { params.append("id", cell.getAttribute("data-job-id")); });
    var polls = 0;

    function schedule() {
      polls += 1;
      if (polls <= MAX_POLLS) {
        window.setTimeout(poll, polls < 10 ? 1500 : 5000);
      }
    }

    function poll() {
      window.fetch(url + "?" + params.toString(), {
        credentials: "same-origin",
        headers: { "Accept": "application/json", "X-KMS-Poll": "1" }
      }).then(function (response) {
        if (!response.ok) { throw new Error("status " + response.status); }
        return response.json();
      }).then(function (data) {
        var changed = active.some(function (cell) {
          return data.jobs[cell.getAttribute("data-job-id")] !== cell.getAttribute("data-job-status");
        });
        if (changed) {
          window.location.reload();
        } else {
          schedule();
        }
      }).catch(schedule);
    }

    schedule();
  }

  /*
   * A share downloaded as a file leaves the page as it was (the answer is an attachment): a form
   * marked data-download-note="<id>" shows that element instead of itself once the download starts.
   * Without script, reloading the page says the share was taken.
   */
  function noteDownloads(form) {
    form.addEventListener("submit", function () {
      var chosen = form.querySelector("input[name=delivery]:checked");
      var note = document.getElementById(form.getAttribute("data-download-note"));
      if (!chosen || chosen.value !== "download" || !note) { return; }
      window.setTimeout(function () {
        form.hidden = true;
        note.hidden = false;
      }, 1500);
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    Array.prototype.forEach.call(document.querySelectorAll("[data-job-poll]"), watch);
    Array.prototype.forEach.call(document.querySelectorAll("form[data-download-note]"), noteDownloads);
  });
}());
