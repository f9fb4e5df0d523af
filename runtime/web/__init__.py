"""The runtime in the browser: static files over onnxruntime-web (runtime/web/README.md); `python -m runtime.web`
serves them with a model package on 127.0.0.1."""
