"""Wire formats. Each module only translates: a body into the one `InferenceRequest`
(400 in the protocol's own envelope and field names), and the runner's event stream into the
protocol's replies and stream events. None touches the pool, limits or the audit."""
