"""The identity layer of `jupyter mlx-manager serve`, chosen at start-up (DESIGN seam 3).

The handlers' one auth path (`handlers/base.py`) stays as it is: a JWT of ours is resolved
first and pre-set as the current user; everything else goes to the identity provider below.

- standalone: our accounts and tokens only. `StandaloneIdentityProvider` accepts nothing on its
  own (no Jupyter token, no cookie): a request without a JWT of ours gets 401.
- as a JupyterHub service: JupyterHub's own `JupyterHubIdentityProvider` and
  `JupyterHubAuthorizer` (the ones single-user servers use) around a `HubOAuth` configured from
  the service's environment: Hub OAuth in the browser (login redirect, the `oauth_callback`
  route under the service prefix, a cookie holding the OAuth token), Hub API tokens in
  `Authorization: token` (validated against the Hub's API, cached), our own JWTs as well.
  Access needs the `access:services!service=<name>` scope; Hub admins are admins here and
  other Hub users approved users (`auth/hub.py`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from jupyter_server.auth import AllowAllAuthorizer, IdentityProvider
from traitlets import Unicode

__all__ = ["Identity", "StandaloneIdentityProvider", "hub_service_identity", "in_hub_service", "standalone_identity"]


def in_hub_service(environ: dict[str, str] | None = None) -> bool:
    """Started by JupyterHub as a service (its API token and URL prefix are in the environment)."""
    env = os.environ if environ is None else environ
    return bool(env.get("JUPYTERHUB_API_TOKEN") and env.get("JUPYTERHUB_SERVICE_PREFIX"))


class StandaloneIdentityProvider(IdentityProvider):
    """Only JWTs of ours authenticate (handlers/base.py pre-sets their user): no Jupyter token
    (`Authorization: token x` is not a credential here), no cookie sessions."""

    token = Unicode("")  # no Jupyter token exists
    mlx_credentials = "Authorization: Bearer <token> (an API token, or the access_token of POST mlx/api/auth/login)"
    need_token = False

    def get_user(self, handler: Any) -> Any:
        return getattr(handler, "_jupyter_current_user", None)

    def is_token_authenticated(self, handler: Any) -> bool:
        return False

    def should_check_origin(self, handler: Any) -> bool:
        return True

    @property
    def auth_enabled(self) -> bool:
        return True

    @property
    def login_available(self) -> bool:
        return False

    def validate_security(self, app: Any, ssl_options: Any = None) -> None:
        return None


@dataclass
class Identity:
    """What the host puts in its tornado settings, and the routes it adds."""

    kind: str  # "standalone" | "jupyterhub"
    identity_provider: Any
    authorizer: Any
    base_url: str = "/"
    routes: list[tuple] = field(default_factory=list)  # (path under base_url, handler, kwargs)
    service_name: str = ""


def standalone_identity(base_url: str = "/") -> Identity:
    provider = StandaloneIdentityProvider()
    return Identity("standalone", provider, AllowAllAuthorizer(identity_provider=provider), base_url)


def hub_service_identity() -> Identity:
    """Hub OAuth + Hub tokens, configured from JupyterHub's service environment."""
    try:
        from jupyterhub.services.auth import HubOAuth
        from jupyterhub.singleuser.extension import (
            JupyterHubAuthorizer,
            JupyterHubIdentityProvider,
            JupyterHubOAuthCallbackHandler,
        )
    except ImportError as exc:  # pragma: no cover - jupyterhub is installed wherever a Hub runs us
        raise SystemExit(f"running as a JupyterHub service needs the jupyterhub package: {exc}") from None
    hub_auth = HubOAuth()  # api_token, api_url, base_url, client id, callback, scopes: all from $JUPYTERHUB_*
    provider = JupyterHubIdentityProvider(hub_auth=hub_auth)
    authorizer = JupyterHubAuthorizer(identity_provider=provider)
    return Identity(
        "jupyterhub",
        provider,
        authorizer,
        hub_auth.base_url,
        routes=[("oauth_callback", JupyterHubOAuthCallbackHandler, {"hub_auth": hub_auth})],
        service_name=os.environ.get("JUPYTERHUB_SERVICE_NAME", ""),
    )
