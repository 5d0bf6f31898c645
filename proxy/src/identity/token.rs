//! How a proxy in a cluster proves its node to the control plane: a
//! projected service account token with the mesh's audience, sent as
//! `authorization: Bearer <token>` on the config stream and on every
//! certificate request. The kubelet rotates the file; it is read again for
//! every request.

use std::path::{Path, PathBuf};

use tonic::metadata::MetadataValue;

/// Errors reading the token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("reading the service account token {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the service account token {path} is empty or not a valid header value")]
    Invalid { path: PathBuf },
}

/// A token file.
#[derive(Debug, Clone)]
pub struct TokenFile {
    path: PathBuf,
}

impl TokenFile {
    pub fn new(path: impl AsRef<Path>) -> Self {
        Self {
            path: path.as_ref().to_path_buf(),
        }
    }

    /// Adds the token to `request`.
    pub fn authorize<T>(&self, request: &mut tonic::Request<T>) -> Result<(), TokenError> {
        let token = std::fs::read_to_string(&self.path).map_err(|source| TokenError::Read {
            path: self.path.clone(),
            source,
        })?;
        let token = token.trim();
        let value = MetadataValue::try_from(format!("Bearer {token}"))
            .ok()
            .filter(|_| !token.is_empty())
            .ok_or_else(|| TokenError::Invalid {
                path: self.path.clone(),
            })?;
        request.metadata_mut().insert("authorization", value);
        Ok(())
    }
}

/// Adds the token, when there is one, to `request`.
pub fn authorize<T>(
    token: Option<&TokenFile>,
    request: &mut tonic::Request<T>,
) -> Result<(), TokenError> {
    match token {
        Some(token) => token.authorize(request),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_read_for_every_request() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first\n").unwrap();
        let token = TokenFile::new(&path);
        let mut request = tonic::Request::new(());
        token.authorize(&mut request).unwrap();
        assert_eq!(
            request.metadata().get("authorization").unwrap(),
            "Bearer first"
        );
        std::fs::write(&path, "second").unwrap();
        token.authorize(&mut request).unwrap();
        assert_eq!(
            request.metadata().get("authorization").unwrap(),
            "Bearer second"
        );
        std::fs::write(&path, "").unwrap();
        assert!(matches!(
            token.authorize(&mut request),
            Err(TokenError::Invalid { .. })
        ));
        let missing = TokenFile::new(dir.path().join("missing"));
        assert!(matches!(
            missing.authorize(&mut request),
            Err(TokenError::Read { .. })
        ));
    }
}
