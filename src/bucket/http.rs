//! A plain HTTP(S) GET, to see what a browser sees (status, Content-Type, CORS headers) for a
//! URL from `bucketfs url`. Not an S3 client: no signing, the URL carries its own.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};

/// Status and headers (names lower-case) of an answer.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("bad URL or header: {0}")]
    Request(String),
    #[error("TLS roots: {0}")]
    Tls(String),
    #[error("request failed: {0}")]
    Send(String),
    #[error("no answer in {0:?}")]
    Timeout(Duration),
}

/// GET `url` with extra `headers`; the body is read and dropped.
pub async fn get(
    url: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<Answer, HttpError> {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| HttpError::Tls(e.to_string()))?
        .https_or_http()
        .enable_http1()
        .build();
    let client: hyper_util::client::legacy::Client<_, Empty<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(https);
    let mut b = http::Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b
        .body(Empty::<Bytes>::new())
        .map_err(|e| HttpError::Request(e.to_string()))?;
    let work = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| HttpError::Send(e.to_string()))?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        // drain, so the connection closes cleanly
        let _ = resp.into_body().collect().await;
        Ok(Answer { status, headers })
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| HttpError::Timeout(timeout))?
}
