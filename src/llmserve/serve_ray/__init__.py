"""``llmserve serve --ray``: the same app and engines scaled out on Ray Serve.

The only package that imports Ray, and only when it is used (``import llmserve`` never does):

- ``replica.py``   a deployment that wraps one unchanged engine per replica (continuous batching
                   inside), streaming deltas back in small lists;
- ``ingress.py``   a thin deployment that serves llmserve's own FastAPI app, whose models forward
                   generation to the replicas through streaming ``DeploymentHandle``s (``remote.py``);
- ``router.py``    a request router with prefix affinity: a conversation's turns go to the replica
                   that holds its KV prefix, the least-loaded replica when that one is too busy;
- ``driver.py``    the CLI side: starts or joins the cluster, deploys, waits for SIGTERM, tears down.

``wire.py`` (what crosses the handle) and ``vocab.py`` (the ingress's tokenizer) import no Ray.
"""

from __future__ import annotations
