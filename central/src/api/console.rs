//! The web console: static assets embedded in the binary, served at `/` and `/console/...`.
//! The page holds no data; it calls the REST API with the operator's bearer token, so these
//! routes need no authentication. Every response carries a strict Content-Security-Policy
//! (scripts, styles and fetches from this origin only; no inline code, no framing).

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// Allows only this origin's files and API, nothing inline, no plugins, no framing.
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const INDEX: Asset = Asset {
    name: "index.html",
    content_type: "text/html; charset=utf-8",
    body: include_bytes!("../../console/index.html"),
};

const ASSETS: &[Asset] = &[
    INDEX,
    Asset {
        name: "console.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../console/console.js"),
    },
    Asset {
        name: "console.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../console/console.css"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../../console/favicon.svg"),
    },
];

/// The console page (no token needed: the page holds no data).
#[utoipa::path(
    get,
    path = "/",
    operation_id = "console",
    tag = "service",
    security(()),
    responses((status = 200, description = "The console page", content_type = "text/html; charset=utf-8", body = String))
)]
pub(super) async fn index() -> Response {
    serve(&INDEX)
}

/// The console page, at `/console` too.
#[utoipa::path(
    get,
    path = "/console",
    operation_id = "console_page",
    tag = "service",
    security(()),
    responses((status = 200, description = "The console page", content_type = "text/html; charset=utf-8", body = String))
)]
pub(super) async fn index_console() -> Response {
    serve(&INDEX)
}

/// The console page, at `/console/` too.
#[utoipa::path(
    get,
    path = "/console/",
    operation_id = "console_directory",
    tag = "service",
    security(()),
    responses((status = 200, description = "The console page", content_type = "text/html; charset=utf-8", body = String))
)]
pub(super) async fn index_console_slash() -> Response {
    serve(&INDEX)
}

/// A file of the console: `index.html`, `console.js`, `console.css` or `favicon.svg`.
#[utoipa::path(
    get,
    path = "/console/{file}",
    operation_id = "console_asset",
    tag = "service",
    security(()),
    params(("file" = String, Path, description = "The file name")),
    responses(
        (status = 200, description = "The file, with its content type", content(
            (String = "text/html; charset=utf-8"),
            (String = "text/javascript; charset=utf-8"),
            (String = "text/css; charset=utf-8"),
            (String = "image/svg+xml"),
        )),
        (status = 404, description = "No such console file", content_type = "text/plain; charset=utf-8", body = String),
    )
)]
pub(super) async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.name == file) {
        Some(asset) => serve(asset),
        None => {
            let mut response = (StatusCode::NOT_FOUND, "no such console file\n").into_response();
            secure(&mut response, "text/plain; charset=utf-8", "no-store");
            response
        }
    }
}

fn serve(asset: &Asset) -> Response {
    let mut response = asset.body.into_response();
    // The page is small and changes with every central release: never cache it; the other
    // files are revalidated so an upgrade shows at the next load.
    let cache = if asset.name == INDEX.name {
        "no-store"
    } else {
        "no-cache"
    };
    secure(&mut response, asset.content_type, cache);
    response
}

fn secure(response: &mut Response, content_type: &'static str, cache: &'static str) {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_the_page_loads_is_embedded() {
        let html = std::str::from_utf8(INDEX.body).unwrap();
        for reference in html.split('"').filter(|s| s.starts_with("/console/")) {
            let name = reference.trim_start_matches("/console/");
            assert!(
                ASSETS.iter().any(|a| a.name == name),
                "index.html loads {reference}, which is not embedded"
            );
        }
    }

    #[test]
    fn console_script_builds_no_markup_from_strings() {
        let js = std::str::from_utf8(ASSETS.iter().find(|a| a.name == "console.js").unwrap().body)
            .unwrap();
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(
                !js.contains(sink),
                "console.js uses {sink}; build nodes with el()/text instead"
            );
        }
    }
}
