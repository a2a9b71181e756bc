"""Data (admins): rounds and counts, importing a file of prompts or labeled pairs, and exporting a dataset (written
next to the database, downloaded as a zip: `labeler/exporting.py`)."""

import functools
import tempfile
from pathlib import Path

import streamlit as st

from labeler.app_store import get_store
from labeler.exporting import ROW_SPLITS, export_dataset, exports_dir, summary, zip_folder
from labeler.render import plain
from labeler.session import current_actor, require_admin
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
            imported = import_file(store, path, kind=kind, source=source.strip() or None)
        except (StoreError, ValueError) as exc:
            # Name the upload, not the temporary file.
            st.error(f"Nothing imported. {plain(str(exc).replace(folder + '/', ''))}")
        else:
            st.success(f"{plain(upload.name)}: imported {imported.inserted} {imported.kind}, "
                       f"skipped {imported.duplicates} duplicates.")

st.subheader("Export")
st.caption(f"A Hugging Face DatasetDict plus Parquet files and a dataset card, written under "
           f"{plain(str(exports_dir(store)))} (next to the database) and downloadable here as a zip.")
with st.form("export"):
    scope = st.selectbox("Scope", ["latest", "all"] + [str(r["round"]) for r in status["rounds"]],
                         help="latest: the newest round; all: every round and the imported pairs")
    name = st.text_input("Name", placeholder="default: round-<n>-<UTC time> or all-<UTC time>")
    both_bad = st.selectbox("Both-bad pairs", ["drop", "negatives"], help="negatives: keep both responses as "
                            "unpaired negatives for KTO-style training")
    do_export = st.form_submit_button("Export", icon=":material/save:")
if do_export:
    try:
        with st.spinner("Exporting…"):
            result = export_dataset(store, scope, name.strip() or None, both_bad, actor=current_actor())
    except (StoreError, ValueError) as exc:
        st.error(f"Nothing exported. {plain(str(exc))}")
    else:
        st.success(f"Exported **{plain(result['name'])}**: {summary(result['counts'])}")

exports = list(reversed(store.list_exports()))  # newest first
if exports:
    st.dataframe([{"name": e["name"], "round": e["round_id"], "created_at": e["created_at"],
                   "rows": ", ".join(f"{s} {e['counts'][s]}" for s in ROW_SPLITS if s in e["counts"]),
                   "on disk": Path(e["path"]).is_dir(), "path": e["path"]} for e in exports], hide_index=True)
downloadable = [e for e in exports if Path(e["path"]).is_dir()]
if downloadable:
    with st.container(horizontal=True, vertical_alignment="bottom"):
        chosen = st.selectbox("Export to download", range(len(downloadable)),
                              format_func=lambda i: downloadable[i]["name"])
        st.download_button("Download zip", data=functools.partial(zip_folder, Path(downloadable[chosen]["path"])),
                           file_name=f"{downloadable[chosen]['name']}.zip", mime="application/zip", on_click="ignore",
                           icon=":material/download:", type="primary")
    st.caption(summary(downloadable[chosen]["counts"]))
