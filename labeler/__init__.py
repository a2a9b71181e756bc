"""The Streamlit labeling UI (`make label`): sign-in, the Label page and the admin pages. No SQL here: every read and
write goes through the `store` API, one short transaction each."""
