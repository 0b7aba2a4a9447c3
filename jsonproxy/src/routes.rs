//! Routes read from `google.api.http` method options in a descriptor pool.

use http::Method;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, MessageDescriptor, MethodDescriptor,
};

use crate::template::Template;

/// One HTTP binding of a unary gRPC method.
#[derive(Debug, Clone)]
pub struct Route {
    pub http_method: Method,
    pub template: Template,
    /// `*` (the whole body is the request), a field name, or empty (no body).
    pub body: String,
    pub method: MethodDescriptor,
    /// `/package.Service/Method`.
    pub grpc_path: String,
}

impl Route {
    pub fn input(&self) -> MessageDescriptor {
        self.method.input()
    }

    pub fn output(&self) -> MessageDescriptor {
        self.method.output()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("service `{0}` is not in the descriptor pool")]
    UnknownService(String),
    #[error("the descriptor pool has no google.api.http extension")]
    NoHttpExtension,
    #[error("{method}: {message}")]
    Bad { method: String, message: String },
}

/// `google.api.FieldBehavior.REQUIRED`.
const REQUIRED: i32 = 2;

/// Whether `f` is marked `[(google.api.field_behavior) = REQUIRED]`.
pub fn is_required(f: &FieldDescriptor) -> bool {
    let Some(ext) = f
        .parent_pool()
        .get_extension_by_name("google.api.field_behavior")
    else {
        return false;
    };
    let options = f.options();
    options.has_extension(&ext)
        && options
            .get_extension(&ext)
            .as_list()
            .is_some_and(|l| l.iter().any(|v| v.as_enum_number() == Some(REQUIRED)))
}

/// Every annotated unary method of `services` (full names, e.g. `sekisho.gateway.v1.Gateway`).
pub fn routes(pool: &DescriptorPool, services: &[&str]) -> Result<Vec<Route>, RouteError> {
    let http = pool
        .get_extension_by_name("google.api.http")
        .ok_or(RouteError::NoHttpExtension)?;
    let mut out = Vec::new();
    for name in services {
        let service = pool
            .get_service_by_name(name)
            .ok_or_else(|| RouteError::UnknownService((*name).to_owned()))?;
        for method in service.methods() {
            let options = method.options();
            if !options.has_extension(&http)
                || method.is_client_streaming()
                || method.is_server_streaming()
            {
                continue;
            }
            let rule = options.get_extension(&http).into_owned();
            let Some(rule) = rule.as_message() else {
                continue;
            };
            let grpc_path = format!("/{}/{}", service.full_name(), method.name());
            push_rule(&mut out, rule, &method, &grpc_path)?;
            if let Some(list) = rule.get_field_by_name("additional_bindings") {
                for extra in list.as_list().unwrap_or_default() {
                    if let Some(extra) = extra.as_message() {
                        push_rule(&mut out, extra, &method, &grpc_path)?;
                    }
                }
            }
        }
    }
    Ok(out)
}

fn push_rule(
    out: &mut Vec<Route>,
    rule: &DynamicMessage,
    method: &MethodDescriptor,
    grpc_path: &str,
) -> Result<(), RouteError> {
    let bad = |message: String| RouteError::Bad {
        method: method.full_name().to_owned(),
        message,
    };
    let text = |f: &str| {
        rule.get_field_by_name(f)
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    let mut found = None;
    for (field, m) in [
        ("get", Method::GET),
        ("put", Method::PUT),
        ("post", Method::POST),
        ("delete", Method::DELETE),
        ("patch", Method::PATCH),
    ] {
        if rule.has_field_by_name(field) {
            found = Some((m, text(field)));
        }
    }
    let Some((http_method, path)) = found else {
        return Err(bad(
            "only get/put/post/delete/patch bindings are supported".into()
        ));
    };
    let template = Template::parse(&path).map_err(bad)?;
    let input = method.input();
    for f in template.fields() {
        if field_path(&input, f).is_none() {
            return Err(bad(format!(
                "path variable `{f}` is not a field of {}",
                input.full_name()
            )));
        }
    }
    let body = text("body");
    if !body.is_empty() && body != "*" && input.get_field_by_name(&body).is_none() {
        return Err(bad(format!(
            "body `{body}` is not a field of {}",
            input.full_name()
        )));
    }
    out.push(Route {
        http_method,
        template,
        body,
        method: method.clone(),
        grpc_path: grpc_path.to_owned(),
    });
    Ok(())
}

/// Resolves a dotted field path to the descriptor of its last field.
pub(crate) fn field_path(
    msg: &MessageDescriptor,
    path: &str,
) -> Option<prost_reflect::FieldDescriptor> {
    let mut msg = msg.clone();
    let mut parts = path.split('.').peekable();
    while let Some(p) = parts.next() {
        let field = msg.get_field_by_name(p)?;
        if parts.peek().is_none() {
            return Some(field);
        }
        msg = field.kind().as_message()?.clone();
    }
    None
}
