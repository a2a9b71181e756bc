"""prefloop's labeling app.

    make label      # = streamlit run streamlit_app.py --server.address 127.0.0.1 --server.port 8501
    PREFLOOP_DB=data/other.duckdb streamlit run streamlit_app.py

Visitors get only the sign-in form, whatever page URL they open (a browser with a live session cookie is signed in
straight away). Annotators get the Label page; the admin pages are registered for them too, hidden, so opening one's
URL shows a refusal (each admin page starts with `require_admin`) instead of silently landing elsewhere. Admins see
every page in the sidebar.

This one file is both the Streamlit script and the server around it: `streamlit run` imports it as a module, finds
`app` (an `st.App` of this same file plus the routes of `labeler/routes.py`, which set the session cookie and take the
lease heartbeat) and serves that; Streamlit then runs the file as `__main__` for every page view, which calls `main`.
"""

from pathlib import Path

import streamlit as st

from labeler.session import account_sidebar, browser_tasks, current_annotator, sign_in_page

ADMIN_PAGES = [  # (file, title, icon)
    ("labeler/pages/data.py", "Data", ":material/database:"),
    ("labeler/pages/review.py", "Review", ":material/rule:"),
    ("labeler/pages/browse.py", "Browse", ":material/search:"),
    ("labeler/pages/annotators.py", "Annotators", ":material/group:"),
    ("labeler/pages/dashboard.py", "Dashboard", ":material/monitoring:"),
]


def main() -> None:
    annotator = current_annotator()
    # Annotators have nothing in the sidebar but their name and "Sign out": keep the width for the two responses.
    # Admins get it open on a wide screen and closed on a phone ("auto"), where it would cover the page. The favicon
    # is an emoji (drawn locally): a ":material/..." icon would be fetched from fonts.gstatic.com by every visitor.
    st.set_page_config(page_title="prefloop", page_icon="⚖️", layout="wide",
                       initial_sidebar_state="auto" if annotator and annotator.is_admin else "collapsed")
    if annotator is None:
        # Every page's URL shows the sign-in form, and after signing in the same URL shows the page itself.
        page = st.navigation(
            [st.Page(sign_in_page, title="Sign in", default=True)]
            + [st.Page(sign_in_page, title="Sign in", url_path=Path(path).stem) for path, _, _ in ADMIN_PAGES],
            position="hidden",
        )
    else:
        label = st.Page("labeler/pages/label.py", title="Label", icon=":material/thumbs_up_down:", default=True)
        admin = [
            st.Page(path, title=title, icon=icon, visibility="visible" if annotator.is_admin else "hidden")
            for path, title, icon in ADMIN_PAGES
        ]
        page = st.navigation({"Labeling": [label], "Admin": admin} if annotator.is_admin else [label, *admin])
        account_sidebar(annotator)
    browser_tasks()
    page.run()


if __name__ == "__main__":
    main()
else:  # imported by `streamlit run` to be served: this same script, plus the cookie and heartbeat routes
    from labeler.routes import ROUTES

    app = st.App(__file__, routes=ROUTES)
