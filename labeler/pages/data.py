"""Data (admins): rounds and counts, importing a file of prompts or labeled pairs, and exporting a dataset."""

import tempfile
from pathlib import Path

import streamlit as st

from labeler.session import current_actor, get_store, require_admin
from store import StoreError

admin = require_admin()
store = get_store()

st.title("Data")
status = store.status()
prompts = status["prompts"]
with st.container(horizontal=True):
    st.metric("Prompts (train)", prompts.get("train", 0), border=True)
    st.metric("Prompts (held-out)", prompts.get("heldout", 0), border=True)
    st.metric("Imported pairs", status["imported_pairs"], border=True)
    st.metric("Judgments", store.count_judgments(), border=True)

st.subheader("Rounds")
if status["rounds"]:
    st.dataframe(status["rounds"], hide_index=True)
else:
    st.info("No round yet. Start one with `prefloop round new`, then `prefloop generate`.")

st.subheader("Import")
st.caption("Prompts (JSONL, CSV, Parquet, plain text) or labeled pairs (TRL, OpenAI preference, Anthropic HH). "
           "A file imports whole or not at all; duplicates are skipped.")
with st.form("import", clear_on_submit=True):
    upload = st.file_uploader("File", type=["jsonl", "ndjson", "json", "csv", "parquet", "txt"])
    kind = st.selectbox("It holds", ["auto", "prompts", "pairs"], help="auto: decided from the records")
    source = st.text_input("Source name", placeholder="default: the file name")
    do_import = st.form_submit_button("Import", icon=":material/upload:")
if do_import and upload is None:
    st.error("Choose a file to import first.")
elif do_import:
    from store.importers import import_file

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / Path(upload.name).name  # the importer names the file in its errors: keep its name
        path.write_bytes(upload.getvalue())
        try:
            summary = import_file(store, path, kind=kind, source=source.strip() or None)
        except (StoreError, ValueError) as exc:
            st.error(f"Nothing imported. {str(exc).replace(folder + '/', '')}")  # name the upload, not the temp file
        else:
            st.success(f"{upload.name}: imported {summary.inserted} {summary.kind}, "
                       f"skipped {summary.duplicates} duplicates.")

st.subheader("Export")
exports = store.list_exports()
if exports:
    st.dataframe([{**{k: e[k] for k in ("id", "name", "round_id", "created_at", "path")},
                   "rows": ", ".join(f"{split} {n}" for split, n in e["counts"].items() if isinstance(n, int))}
                  for e in exports], hide_index=True)
with st.form("export"):
    scope = st.selectbox("Scope", ["latest", "all"] + [str(r["round"]) for r in status["rounds"]],
                         help="latest: the newest round; all: every round and the imported pairs")
    name = st.text_input("Name", placeholder="default: round-<n>-<UTC time> or all-<UTC time>")
    both_bad = st.selectbox("Both-bad pairs", ["drop", "negatives"], help="negatives: keep both responses as "
                            "unpaired negatives for KTO-style training")
    do_export = st.form_submit_button("Export", icon=":material/download:")
if do_export:
    from training.export import ExportConfig, export

    try:
        with st.spinner("Exporting…"):
            result = export(store, ExportConfig(name=name.strip() or None, round=scope, both_bad=both_bad),
                            actor=current_actor())
    except (StoreError, ValueError) as exc:
        st.error(f"Nothing exported. {exc}")
    else:
        st.success(f"Exported {result['name']} to {result['path']}: {result['counts']}")
