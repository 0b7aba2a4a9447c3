//! The JSON proxy: every gRPC method with a `google.api.http` annotation is served over
//! HTTP/JSON with the proto3 JSON mapping, and `/openapi.json` describes them. Both come
//! from the descriptor set, so the proto stays the only contract.
//!
//! The proxy transcodes and forwards to a gRPC service — the server's own routes in
//! process, or a channel to another process — so it never duplicates a handler.

mod app;
mod codec;
mod error;
pub mod metrics;
mod openapi;
mod proxy;
mod routes;
mod template;

pub use app::{app, is_grpc, serve};
pub use codec::RawCodec;
pub use error::{ApiError, RETRY_PUSHBACK, close_connection, http_status};
pub use openapi::openapi;
pub use proxy::{JsonProxy, Upstream, method_not_allowed, route_for, upstream};
pub use routes::{Route, RouteError, routes};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_come_from_the_annotations() {
        let pool = sekisho_proto::descriptor_pool();
        let r = routes(
            pool,
            &[
                "sekisho.gateway.v1.Gateway",
                "sekisho.chainstore.v1.ChainStore",
            ],
        )
        .unwrap();
        let moderate = r.iter().find(|r| r.method.name() == "Moderate").unwrap();
        assert_eq!(moderate.http_method, http::Method::POST);
        assert_eq!(moderate.body, "*");
        assert_eq!(moderate.grpc_path, "/sekisho.gateway.v1.Gateway/Moderate");
        // Streaming methods have no HTTP binding.
        assert!(
            !r.iter()
                .any(|r| r.method.name() == "ModerateStream" || r.method.name() == "Watch")
        );
    }

    #[test]
    fn openapi_describes_paths_and_the_json_mapping() {
        let pool = sekisho_proto::descriptor_pool();
        let r = routes(pool, &["sekisho.gateway.v1.Gateway"]).unwrap();
        let doc = openapi(&r, "Sekisho", "0.1.0");
        let op = &doc["paths"]["/v1/chains/{chain}:moderate"]["post"];
        assert_eq!(op["operationId"], "Gateway_Moderate");
        assert_eq!(op["parameters"][0]["name"], "chain");
        let content = &doc["components"]["schemas"]["sekisho.filter.v1.Content"]["properties"];
        assert_eq!(content["data"]["format"], "byte");
        assert_eq!(content["contentType"]["type"], "string");
        let resp =
            &doc["components"]["schemas"]["sekisho.gateway.v1.ModerateResponse"]["properties"];
        assert_eq!(resp["decision"]["enum"][1], "APPROVE");
        assert_eq!(
            resp["chainVersion"]["type"], "string",
            "uint64 is a string in proto3 JSON"
        );
        // The path names the chain: the body's schema leaves it out (and requires what
        // the message requires).
        let body = &op["requestBody"]["content"]["application/json"]["schema"];
        assert!(body["properties"].get("chain").is_none(), "{body}");
        assert!(body["properties"].get("content").is_some(), "{body}");
        assert_eq!(body["required"], serde_json::json!(["content"]));
        assert_eq!(body["additionalProperties"], false);
        // A chosen payload is not empty (the gateway refuses an empty one).
        assert_eq!(content["data"]["minLength"], 1);
        assert_eq!(content["text"]["minLength"], 1);
        assert_eq!(resp["chainVersion"]["pattern"], "^0*[0-9]{1,19}$");
        // null is a field's default in a request (proto3 JSON), not where it is required,
        // and never in a response.
        assert_eq!(body["properties"]["requestId"]["nullable"], true);
        assert!(body["properties"]["content"].get("nullable").is_none());
        assert!(resp["reason"].get("nullable").is_none());
        let features = &doc["components"]["schemas"]["sekisho.filter.v1.Features"]["properties"];
        assert_eq!(features["values"]["nullable"], true);
        // A float beyond f32's range is refused by the proxy, so the document bounds it.
        assert_eq!(features["values"]["items"]["maximum"], f64::from(f32::MAX));
        assert!(
            resp["audit"]["description"]
                .as_str()
                .unwrap()
                .contains("spot check")
        );
    }
}
