// /docs: Swagger UI over this service's own /openapi.json (no other origin is contacted).
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null, // the default validator is an external service
    persistAuthorization: true,
  });
});
