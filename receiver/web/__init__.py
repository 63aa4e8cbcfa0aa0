"""The dashboard: server-rendered pages under /ui, for people.

A view module per page, a Jinja template per page (``templates/``), one stylesheet and a
small script per live feature (``static/``), no build step. Pages render the job JSON of
the admin API (``Runtime.render_job``), so the page, the API and the event stream show a
job the same way.
"""
