//! Where secrets come from: a file, an environment variable, or a prompt on the terminal.
//! Never from a plain command-line argument (it would show in `ps` and shell history). Key
//! passphrases are read through [`Source`], and so is the enrollment token of `mtls enroll`
//! ([`enrollment_token`]).

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{Context, Result};
use zeroize::Zeroizing;

/// One passphrase source: `--<flag> FILE` or `$ENV`, else a prompt.
pub struct Source<'a> {
    pub file: Option<&'a Path>,
    pub env: &'static str,
    pub flag: &'static str,
    pub what: &'static str,
}

/// The one passphrase-file rule of mtls ([`mtls_pki::files::read_passphrase_file`]): owner-only,
/// one trailing line ending dropped.
fn read_file(path: &Path, what: &str) -> Result<Zeroizing<Vec<u8>>> {
    mtls_pki::files::read_passphrase_file(path)
        .with_context(|| format!("reading {what} file {}", path.display()))
}

impl Source<'_> {
    /// A passphrase if one was supplied (file or environment), without prompting.
    pub fn supplied(&self) -> Result<Option<Zeroizing<Vec<u8>>>> {
        if let Some(f) = self.file {
            return Ok(Some(read_file(f, self.what)?));
        }
        if let Ok(v) = std::env::var(self.env) {
            return Ok(Some(Zeroizing::new(v.into_bytes())));
        }
        Ok(None)
    }

    /// A passphrase to unlock something: supplied, or asked once on a terminal; without
    /// either, an error naming this source's flag and variable.
    pub fn unlock(&self) -> Result<Zeroizing<Vec<u8>>> {
        if let Some(p) = self.supplied()? {
            return Ok(p);
        }
        if std::io::stdin().is_terminal() {
            let p = rpassword::prompt_password(format!("{}: ", self.what))
                .context("reading passphrase")?;
            return Ok(Zeroizing::new(p.into_bytes()));
        }
        Err(crate::UsageError(format!(
            "{} needed: pass {} FILE or set {} (no terminal to prompt on)",
            self.what, self.flag, self.env
        ))
        .into())
    }

    /// A passphrase for the key file `key`, asked for only if the key is encrypted.
    pub fn unlock_if_encrypted(&self, key: &Path) -> Result<Option<Zeroizing<Vec<u8>>>> {
        let bytes = mtls_pki::files::read_secret(key)?;
        if mtls_pki::key::is_encrypted(&bytes) {
            let p = self
                .unlock()
                .with_context(|| format!("{} is encrypted", key.display()))?;
            Ok(Some(p))
        } else {
            Ok(None)
        }
    }

    /// A new passphrase to protect something: supplied, or asked twice on a terminal.
    pub fn new_secret(&self) -> Result<Zeroizing<Vec<u8>>> {
        let p = if let Some(p) = self.supplied()? {
            p
        } else if std::io::stdin().is_terminal() {
            let a = Zeroizing::new(rpassword::prompt_password(format!("{}: ", self.what))?);
            let b = Zeroizing::new(rpassword::prompt_password(format!(
                "{} (again): ",
                self.what
            ))?);
            if *a != *b {
                return Err(crate::UsageError("the passphrases do not match".into()).into());
            }
            Zeroizing::new(a.as_bytes().to_vec())
        } else {
            return Err(crate::UsageError(format!(
                "{} needed: pass {} FILE or set {} (no terminal to prompt on)",
                self.what, self.flag, self.env
            ))
            .into());
        };
        if p.len() < 8 {
            return Err(
                crate::UsageError(format!("{} must be at least 8 bytes long", self.what)).into(),
            );
        }
        Ok(p)
    }
}

/// The longest enrollment token read from standard input (tokens are under 100 bytes).
const MAX_STDIN_TOKEN: u64 = 64 << 10;

/// The one-time token of `mtls enroll`, a secret taken as passphrases are: `--token-file FILE`
/// (owner-only, as a passphrase file; `-` reads standard input, for `printf … | sudo -u USER
/// mtls enroll`, where the other user cannot reopen the pipe as `/dev/stdin`), else
/// `$MTLS_TOKEN`, else a prompt on the terminal. Surrounding whitespace is not part of it.
pub fn enrollment_token(file: Option<&Path>) -> Result<Zeroizing<String>> {
    let raw = if file == Some(Path::new("-")) {
        use std::io::Read;
        let mut v = Zeroizing::new(Vec::new());
        std::io::stdin()
            .lock()
            .take(MAX_STDIN_TOKEN)
            .read_to_end(&mut v)
            .context("reading the enrollment token from standard input")?;
        v
    } else {
        Source {
            file,
            env: "MTLS_TOKEN",
            flag: "--token-file",
            what: "enrollment token",
        }
        .unlock()?
    };
    let text = std::str::from_utf8(&raw)
        .map_err(|_| crate::UsageError("the enrollment token is not text".into()))?
        .trim();
    if text.is_empty() {
        return Err(crate::UsageError("the enrollment token is empty".into()).into());
    }
    Ok(Zeroizing::new(text.to_string()))
}
