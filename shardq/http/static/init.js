// The browsable reference of the shardq HTTP API: swagger-ui over the server's own document.
window.ui = SwaggerUIBundle({ url: "/api/v1/openapi.json", dom_id: "#ui", deepLinking: true });
