// The review page: renders /api/state, sends each action as one POST, and shows the server's message when it fails.
"use strict";

const REFRESH_MS = 15000;
let state = null;
let tab = "visits";

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function when(seconds) {
  return new Date(seconds * 1000).toLocaleString();
}

function say(text, isError = false) {
  const box = document.getElementById("message");
  box.textContent = text;
  box.className = isError ? "error" : "";
  box.hidden = false;
}

async function post(path, body, contentType = "application/json") {
  const response = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": contentType, "X-Requested-With": "doorface" },
    body: contentType === "application/json" ? JSON.stringify(body) : body,
  });
  const data = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
  return data;
}

async function act(work, done) {
  try {
    const result = await work();
    say(done(result));
  } catch (error) {
    say(error.message, true);
  }
  await load();
}

function personOptions(exclude) {
  const select = el("select", { class: "person-select" }, el("option", { value: "" }, "choose a person"));
  for (const person of state.people) {
    if (person.name !== exclude) select.append(el("option", { value: person.name }, person.name));
  }
  return select;
}

function renderVisits() {
  const list = document.getElementById("visit-list");
  list.replaceChildren();
  if (!state.visits.length) list.append(el("p", { class: "empty" }, "No visits recorded yet."));
  for (const visit of state.visits) {
    const who = visit.person || (visit.group !== null ? `Unknown (group ${visit.group})` : "Unknown");
    const card = el("div", { class: `card visit ${visit.person ? "known" : "unknown"}`, dataset: { visit: visit.id } },
      visit.has_crop ? el("img", { src: `/api/visits/${visit.id}/crop.jpg`, alt: who }) : el("div", {}, "no crop"),
      el("div", { class: "who" }, who),
      el("div", { class: "when" }, `${when(visit.timestamp)} · ${visit.camera}`));
    if (visit.not_person) card.append(el("div", { class: "meta" }, `corrected: not ${visit.not_person}`));
    if (visit.person) {
      card.append(el("button", {
        class: "link not-person",
        onclick: () => act(() => post(`/api/visits/${visit.id}/not-person`, {}),
          () => `Visit marked as not ${visit.person}; it is now with the unknown visitors.`),
      }, `not ${visit.person}?`));
    }
    list.append(card);
  }
}

function renderGroups() {
  const list = document.getElementById("group-list");
  list.replaceChildren();
  document.getElementById("group-count").textContent = state.groups.length ? `(${state.groups.length})` : "";
  if (!state.groups.length) list.append(el("p", { class: "empty" }, "No unknown visitors."));
  for (const group of state.groups) {
    const faces = el("div", { class: "faces" });
    for (const visit of state.visits.filter((v) => v.group === group.id && v.has_crop).slice(0, 8)) {
      faces.append(el("figure", {}, el("img", { src: `/api/visits/${visit.id}/crop.jpg`, alt: "" }),
        el("figcaption", {}, when(visit.timestamp))));
    }
    if (!faces.children.length && group.cover !== null) {
      faces.append(el("img", { src: `/api/visits/${group.cover}/crop.jpg`, alt: "" }));
    }
    const name = el("input", { class: "name-input", placeholder: "Name this person", maxlength: "64" });
    const select = personOptions(null);
    const card = el("div", { class: "card group", dataset: { group: group.id } },
      el("h3", {}, `Group ${group.id}: ${group.visits} visit${group.visits === 1 ? "" : "s"}`),
      el("div", { class: "meta" }, `first seen ${when(group.first_seen)}, last seen ${when(group.last_seen)}`),
      faces,
      el("div", { class: "actions" },
        name,
        el("button", {
          class: "primary name-button",
          onclick: () => act(() => post(`/api/groups/${group.id}/name`, { name: name.value }),
            (r) => `Group ${group.id} is now ${r.person} (${r.embeddings} faces enrolled).`),
        }, "Name"),
        el("span", { class: "meta" }, "or add to"),
        select,
        el("button", {
          class: "add-button",
          onclick: () => act(() => post(`/api/groups/${group.id}/add`, { person: select.value }),
            (r) => `Group ${group.id} added to ${r.person} (${r.embeddings} faces now).`),
        }, "Add")));
    list.append(card);
  }
}

function renderPeople() {
  const list = document.getElementById("people-list");
  list.replaceChildren();
  document.getElementById("people-count").textContent = `(${state.people.length})`;
  if (!state.people.length) list.append(el("p", { class: "empty" }, "Nobody enrolled yet."));
  for (const person of state.people) {
    const faces = el("div", { class: "faces" });
    for (const sample of person.samples) {
      const figure = el("figure", { dataset: { sample: sample.id } },
        sample.has_thumbnail ? el("img", { src: `/api/samples/${sample.id}.jpg`, alt: "", title: sample.source })
          : el("div", { class: "meta" }, "no thumbnail"),
        el("button", {
          class: "link exclude-sample",
          onclick: () => act(() => post("/api/people/exclude-sample", { name: person.name, sample: sample.id }),
            () => `That face is no longer ${person.name}'s.`),
        }, "not them"));
      faces.append(figure);
    }
    const rename = el("input", { class: "rename-input", placeholder: "New name", maxlength: "64" });
    const into = personOptions(person.name);
    const photo = el("input", { type: "file", accept: "image/jpeg,image/png", class: "photo-input" });
    list.append(el("div", { class: "card person", dataset: { name: person.name } },
      el("h3", {}, `${person.name} `, el("span", { class: "meta" }, `${person.embeddings} faces`)),
      faces,
      el("div", { class: "actions" },
        rename,
        el("button", {
          class: "rename-button",
          onclick: () => act(() => post("/api/people/rename", { name: person.name, new_name: rename.value }),
            (r) => `${person.name} is now ${r.person}.`),
        }, "Rename"),
        into,
        el("button", {
          class: "merge-button",
          onclick: () => act(() => post("/api/people/merge", { name: person.name, into: into.value }),
            (r) => `${person.name} merged into ${r.person}.`),
        }, "Merge into"),
        photo,
        el("button", {
          class: "photo-button",
          onclick: () => act(() => upload(person.name, photo.files[0]),
            (r) => `Photo added to ${r.person} (${r.embeddings} faces).`),
        }, "Add photo"),
        el("button", {
          class: "danger remove-button",
          onclick: () => {
            if (confirm(`Remove ${person.name}, their faces and their visits?`)) {
              act(() => post("/api/people/remove", { name: person.name }), (r) => `${r.removed} removed.`);
            }
          },
        }, "Remove"))));
  }
}

function upload(name, file) {
  if (!file) return Promise.reject(new Error("choose a photo first"));
  return post(`/api/people/photo?name=${encodeURIComponent(name)}`, file, file.type || "image/jpeg");
}

function show(name) {
  tab = name;
  for (const button of document.querySelectorAll(".tab")) button.classList.toggle("active", button.dataset.tab === tab);
  for (const panel of document.querySelectorAll(".panel")) panel.hidden = panel.id !== tab;
}

async function load() {
  try {
    const response = await fetch("/api/state", { cache: "no-store" });
    const data = await response.json();
    if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
    state = data;
  } catch (error) {
    say(`cannot load the visits: ${error.message}`, true);
    return;
  }
  document.getElementById("camera").textContent = state.camera;
  document.getElementById("retention").textContent =
    `Face crops stay on this device for ${state.retention.days} days (at most ${state.retention.max_mb} MB).`;
  renderVisits();
  renderGroups();
  renderPeople();
  document.body.dataset.loaded = String(Date.now());
}

function typing() {
  const active = document.activeElement;
  return active && (active.tagName === "INPUT" || active.tagName === "SELECT") && active.value;
}

document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll(".tab")) button.addEventListener("click", () => show(button.dataset.tab));
  document.getElementById("new-person").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = event.target;
    act(() => upload(form.elements.name.value, form.elements.photo.files[0]),
      (r) => `${r.person} enrolled (${r.embeddings} faces).`);
  });
  show(location.hash.slice(1) || "visits");
  load();
  setInterval(() => { if (!typing()) load(); }, REFRESH_MS);
});
