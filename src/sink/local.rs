//! The local-files sink: JSONL data files, state and remote config under one directory.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::{EncodedBatch, Error, PutReport, Sink, check_config_segment, mailbox_segment};
use crate::config::Bucket;
use crate::durable::{write_atomically, write_atomically_with};
use crate::sync::state::MailboxState;

/// Layout under the prefix directory:
/// - `data/<owner>/<bucket>/<mailbox>/<YYYY-MM>/<first-received>-<hash>.jsonl`: one email
///   document per line, the format `re create emails` reads;
/// - `state/<owner>/<bucket>/<mailbox>.json`: sync state;
/// - `config/<owner>/<key>.json`: remote configuration.
///
/// Every file is written whole under a temporary name and renamed, so a `.jsonl` name never
/// holds a partial file. A batch's file name derives from its ids, so storing the same batch
/// again replaces the file instead of duplicating it.
pub struct LocalSink {
    root: PathBuf,
}

impl LocalSink {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalSink { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn state_path(&self, bucket: &Bucket, mailbox: &str) -> PathBuf {
        self.root.join(state_name(bucket, mailbox))
    }
}

/// Where the state of `mailbox` lives, relative to the prefix, `/`-separated. The Azure sink
/// names its blobs the same way.
pub(crate) fn state_name(bucket: &Bucket, mailbox: &str) -> String {
    format!(
        "state/{}/{}/{}.json",
        bucket.owner,
        bucket.name,
        mailbox_segment(mailbox)
    )
}

/// Where the file of `batch` lives, relative to the prefix, `/`-separated.
pub(crate) fn data_name(bucket: &Bucket, mailbox: &str, batch: &EncodedBatch) -> String {
    let mut ids = Vec::with_capacity(batch.ids.iter().map(|i| i.len() + 1).sum());
    for id in &batch.ids {
        ids.extend_from_slice(id.as_bytes());
        ids.push(0);
    }
    let hash = crate::digest::sha256_hex(&ids, 8);
    let (month, stamp) = match batch.first_received {
        Some(t) => (
            format!("{:04}-{:02}", t.year(), t.month() as u8),
            format!(
                "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
                t.year(),
                t.month() as u8,
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            ),
        ),
        None => ("undated".to_owned(), "undated".to_owned()),
    };
    format!(
        "data/{}/{}/{}/{month}/{stamp}-{hash}.jsonl",
        bucket.owner,
        bucket.name,
        mailbox_segment(mailbox)
    )
}

/// Where the remote configuration `owner`/`key` lives, relative to the prefix; checks that
/// both are path-safe.
pub(crate) fn config_name(owner: &str, key: &str) -> Result<String, Error> {
    check_config_segment("--remote-config-owner", owner)?;
    check_config_segment("--remote-config-key", key)?;
    Ok(format!("config/{owner}/{key}.json"))
}

/// A batch as file content: one document per line.
pub(crate) fn encode_batch(batch: &EncodedBatch) -> Vec<u8> {
    let mut contents = Vec::with_capacity(batch.bytes() + batch.docs.len());
    for doc in &batch.docs {
        contents.extend_from_slice(doc);
        contents.push(b'\n');
    }
    contents
}

/// A state as file content: pretty JSON and a final newline.
pub(crate) fn encode_state(state: &MailboxState) -> Result<Vec<u8>, Error> {
    let mut json = serde_json::to_vec_pretty(state).map_err(|err| Error::Invalid {
        detail: format!("cannot encode state: {err}"),
    })?;
    json.push(b'\n');
    Ok(json)
}

fn read_error(path: &Path, err: io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        detail: err.to_string(),
    }
}

impl Sink for LocalSink {
    fn describe(&self) -> String {
        format!("local:{}", self.root.display())
    }

    fn put_emails(
        &self,
        bucket: &Bucket,
        mailbox: &str,
        batch: &EncodedBatch,
    ) -> Result<PutReport, Error> {
        if batch.docs.is_empty() {
            return Ok(PutReport::default());
        }
        let path = self.root.join(data_name(bucket, mailbox, batch));
        // Straight from the documents to the file: a joined copy of the batch would double
        // the memory each upload holds.
        write_atomically_with(&path, |file| {
            let mut out = io::BufWriter::with_capacity(64 * 1024, file);
            for doc in &batch.docs {
                io::Write::write_all(&mut out, doc)?;
                io::Write::write_all(&mut out, b"\n")?;
            }
            io::Write::flush(&mut out)
        })?;
        Ok(PutReport::default())
    }

    fn load_state(&self, bucket: &Bucket, mailbox: &str) -> Result<Option<MailboxState>, Error> {
        let path = self.state_path(bucket, mailbox);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(read_error(&path, err)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|err| Error::Corrupt {
                path: path.display().to_string(),
                detail: err.to_string(),
            })
    }

    fn save_state(&self, bucket: &Bucket, state: &MailboxState) -> Result<(), Error> {
        let json = encode_state(state)?;
        write_atomically(&self.state_path(bucket, &state.mailbox), &json)?;
        Ok(())
    }

    fn read_config(&self, owner: &str, key: &str) -> Result<Vec<u8>, Error> {
        let path = self.root.join(config_name(owner, key)?);
        fs::read(&path).map_err(|err| match err.kind() {
            io::ErrorKind::NotFound => Error::NotFound {
                what: format!("remote configuration {}", path.display()),
            },
            _ => read_error(&path, err),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn bucket() -> Bucket {
        Bucket {
            owner: "acme".into(),
            name: "mail".into(),
        }
    }

    #[test]
    fn batch_round_trip_and_idempotent_name() {
        let dir = tempfile::tempdir().unwrap();
        let sink = LocalSink::new(dir.path());
        let batch = EncodedBatch {
            docs: vec![br#"{"id":"1"}"#.to_vec(), br#"{"id":"2"}"#.to_vec()],
            ids: vec!["1".into(), "2".into()],
            first_received: Some(datetime!(2024-03-01 10:00:05 UTC)),
        };
        sink.put_emails(&bucket(), "Bob@X.com", &batch).unwrap();
        sink.put_emails(&bucket(), "Bob@X.com", &batch).unwrap();
        let month = dir.path().join("data/acme/mail/bob@x.com/2024-03");
        let files: Vec<_> = fs::read_dir(&month)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1);
        let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with("20240301T100005Z-") && name.ends_with(".jsonl"),
            "{name}"
        );
        assert_eq!(
            fs::read(&files[0]).unwrap(),
            b"{\"id\":\"1\"}\n{\"id\":\"2\"}\n"
        );
    }

    #[test]
    fn state_round_trip_and_corrupt_state() {
        let dir = tempfile::tempdir().unwrap();
        let sink = LocalSink::new(dir.path());
        assert!(sink.load_state(&bucket(), "a@b.c").unwrap().is_none());
        let state = MailboxState {
            version: 1,
            mailbox: "a@b.c".into(),
            folders: Default::default(),
        };
        sink.save_state(&bucket(), &state).unwrap();
        assert_eq!(sink.load_state(&bucket(), "A@B.C").unwrap(), Some(state));
        fs::write(dir.path().join("state/acme/mail/a@b.c.json"), b"{").unwrap();
        let err = sink.load_state(&bucket(), "a@b.c").unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    }

    #[test]
    fn remote_config_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let sink = LocalSink::new(dir.path());
        fs::create_dir_all(dir.path().join("config/acme")).unwrap();
        fs::write(dir.path().join("config/acme/prod.json"), b"{}").unwrap();
        assert_eq!(sink.read_config("acme", "prod").unwrap(), b"{}");
        assert!(matches!(
            sink.read_config("acme", "nope"),
            Err(Error::NotFound { .. })
        ));
        assert!(matches!(
            sink.read_config("..", "prod"),
            Err(Error::Invalid { .. })
        ));
    }
}
