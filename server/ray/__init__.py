"""The same service on Ray Serve (``distill-serve serve --ray``): the deployment, launching,
and the bridge of our metrics into Ray's export. Imported only when Ray is asked for."""
