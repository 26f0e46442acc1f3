"""Kubernetes: the project rendered as manifests (`render`), checked for APIs a version
removed or deprecates (`deprecations`), and validated against a version's OpenAPI schemas
(`validate`). Pure but for reading the files a service names."""
