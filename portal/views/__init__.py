"""The pages: thin views that parse input, call the domain and render."""

from __future__ import annotations

from flask import Flask
from flask_login import current_user

from portal import assets
from portal.access import administered_organizations
from portal.extensions import csrf, db
from portal.views import (
    auth,
    billing,
    errors,
    formatting,
    health,
    notifications,
    orgs,
    security,
    usage,
)


def init_app(app: Flask) -> None:
    security.init_app(app)
    csrf.init_app(app)
    assets.init_app(app)
    formatting.init_app(app)
    for module in (health, auth, usage, orgs, billing, notifications):
        app.register_blueprint(module.blueprint)
    errors.register_error_handlers(app)

    @app.context_processor
    def navigation() -> dict[str, object]:
        # A function, so only pages that show the navigation run the query.
        def admin_orgs() -> list[object]:
            if not current_user.is_authenticated:
                return []
            return list(administered_organizations(db.session(), current_user.id))

        return {"admin_orgs": admin_orgs, "billing_enabled": billing.billing_enabled}
