"""The web application: ``/healthz``, the channels' webhooks and the officers' and commanders'
panel at ``/admin`` (:func:`admin.web.build_web_app`). It depends on the running service only
through :class:`admin.runtime.PanelRuntime`."""
