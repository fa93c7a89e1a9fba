//! The headers sent with every export, from `OTEL_EXPORTER_OTLP_TRACES_HEADERS` or
//! `OTEL_EXPORTER_OTLP_HEADERS`: `name=value` pairs separated by commas, values
//! percent-encoded, as the OpenTelemetry specification writes them. They often carry the
//! collector's credentials, so neither an error nor `Debug` shows a value.

use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue, MetadataMap};

#[derive(Clone, Default, PartialEq, Eq)]
pub struct CollectorHeaders(Vec<(AsciiMetadataKey, AsciiMetadataValue)>);

impl std::fmt::Debug for CollectorHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, _)| format!("{name}: <redacted>")))
            .finish()
    }
}

impl CollectorHeaders {
    /// The headers `value` (of the variable `variable`) lists; an entry that is not a header
    /// refuses them all, since a header left out is most likely the credential.
    pub(crate) fn parse(variable: &str, value: &str) -> Result<CollectorHeaders, String> {
        let mut headers = Vec::new();
        // Empty entries (a trailing comma) are no mistake.
        let entries = value
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty());
        for (number, entry) in entries.enumerate() {
            let number = number + 1;
            let Some((name, value)) = entry.split_once('=') else {
                return Err(format!(
                    "{variable}: entry {number} is not name=value (entries are separated by commas)"
                ));
            };
            let name = AsciiMetadataKey::from_bytes(name.trim().as_bytes()).map_err(|_| {
                format!("{variable}: entry {number} does not start with a header name")
            })?;
            let value = percent_decoded(value.trim())
                .filter(|value| value.iter().all(|byte| (b' '..=b'~').contains(byte)))
                .and_then(|value| AsciiMetadataValue::try_from(value.as_slice()).ok())
                .ok_or_else(|| {
                    format!(
                        "{variable}: the value of entry {number} ({name}) is not printable ASCII once percent-decoded"
                    )
                })?;
            headers.push((name, value));
        }
        Ok(CollectorHeaders(headers))
    }

    pub(super) fn metadata(&self) -> MetadataMap {
        let mut metadata = MetadataMap::with_capacity(self.0.len());
        for (name, value) in &self.0 {
            metadata.append(name.clone(), value.clone());
        }
        metadata
    }
}

/// `value` with each `%XY` replaced by the byte it stands for; `None` for a `%` not
/// followed by two hex digits.
fn percent_decoded(value: &str) -> Option<Vec<u8>> {
    let mut bytes = value.bytes();
    let mut decoded = Vec::with_capacity(value.len());
    while let Some(byte) = bytes.next() {
        if byte == b'%' {
            let digits = [bytes.next()?, bytes.next()?];
            let digits = std::str::from_utf8(&digits).ok()?;
            decoded.push(u8::from_str_radix(digits, 16).ok()?);
        } else {
            decoded.push(byte);
        }
    }
    Some(decoded)
}

#[cfg(test)]
mod tests {
    use super::CollectorHeaders;

    const VARIABLE: &str = "OTEL_EXPORTER_OTLP_HEADERS";

    #[test]
    fn headers_are_read_as_the_specification_writes_them() {
        type Headers<'a> = &'a [(&'a str, &'a str)];
        let cases: &[(&str, Result<Headers, &str>)] = &[
            ("", Ok(&[])),
            ("api-key=s3cret", Ok(&[("api-key", "s3cret")])),
            (
                " Authorization = Bearer%20abc%3D ,x-tenant=blue,",
                Ok(&[("authorization", "Bearer abc="), ("x-tenant", "blue")]),
            ),
            ("a=1,,b=2", Ok(&[("a", "1"), ("b", "2")])),
            ("a=x=y", Ok(&[("a", "x=y")])),
            (
                "a=1,s3cret",
                Err("OTEL_EXPORTER_OTLP_HEADERS: entry 2 is not name=value (entries are separated by commas)"),
            ),
            (
                "bad name=s3cret",
                Err("OTEL_EXPORTER_OTLP_HEADERS: entry 1 does not start with a header name"),
            ),
            (
                "=s3cret",
                Err("OTEL_EXPORTER_OTLP_HEADERS: entry 1 does not start with a header name"),
            ),
            (
                "a=s3cret%0A",
                Err("OTEL_EXPORTER_OTLP_HEADERS: the value of entry 1 (a) is not printable ASCII once percent-decoded"),
            ),
            (
                "a=s3cret%4",
                Err("OTEL_EXPORTER_OTLP_HEADERS: the value of entry 1 (a) is not printable ASCII once percent-decoded"),
            ),
            (
                "a=s3cr%C3%A9t",
                Err("OTEL_EXPORTER_OTLP_HEADERS: the value of entry 1 (a) is not printable ASCII once percent-decoded"),
            ),
        ];
        for (value, expected) in cases {
            let got = CollectorHeaders::parse(VARIABLE, value);
            match (got, expected) {
                (Ok(headers), Ok(expected)) => {
                    let got: Vec<(String, String)> = headers
                        .0
                        .iter()
                        .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_owned()))
                        .collect();
                    let expected: Vec<(String, String)> = expected
                        .iter()
                        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                        .collect();
                    assert_eq!(got, expected, "{value:?}");
                }
                (Err(error), Err(expected)) => {
                    assert_eq!(&error, expected, "{value:?}");
                    assert!(!error.contains("s3cr"), "{value:?}: {error}");
                }
                (got, expected) => panic!("{value:?}: {got:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn debug_shows_the_names_and_never_a_value() {
        let headers = CollectorHeaders::parse(VARIABLE, "authorization=Bearer%20s3cret").unwrap();
        let shown = format!("{headers:?}");
        assert!(shown.contains("authorization"), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}
