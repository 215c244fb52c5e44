//! A throwaway PKI for TLS tests, made with the `openssl` CLI: a CA, a server certificate for
//! `localhost` / 127.0.0.1, client certificates on demand, and a second CA that nobody trusts.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

const OPENSSL_CNF: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = walkeeper test
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

/// Certificates and keys of one cluster's test PKI (all PEM files in one directory).
#[derive(Clone, Debug)]
pub struct TestPki {
    dir: PathBuf,
}

impl TestPki {
    /// Creates the CA, the untrusted second CA and the server certificate in `dir`.
    pub fn generate(dir: &Path) -> TestPki {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
        let pki = TestPki { dir: dir.to_path_buf() };
        fs::write(pki.cnf(), OPENSSL_CNF).unwrap();
        pki.self_signed("ca", "walkeeper test CA");
        pki.self_signed("other-ca", "walkeeper untrusted CA");
        pki.signed("server", "localhost", "server");
        let (_, key) = pki.server_cert_and_key();
        super::give_to_server(&key);
        pki
    }

    /// The CA that signed the server and client certificates (use as `sslrootcert`).
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// A CA that signed nothing here: verification against it must fail.
    pub fn other_ca_cert(&self) -> PathBuf {
        self.dir.join("other-ca.crt")
    }

    /// The server's certificate and key (the key is 0600, owned by the server user).
    pub fn server_cert_and_key(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("server.crt"), self.dir.join("server.key"))
    }

    /// A client certificate with CN=`user` signed by the CA: (cert, key 0600 owned by the caller).
    pub fn client_cert(&self, user: &str) -> (PathBuf, PathBuf) {
        let stem = format!("client-{}", user.replace(|c: char| !c.is_ascii_alphanumeric(), "_"));
        let cert = self.dir.join(format!("{stem}.crt"));
        let key = self.dir.join(format!("{stem}.key"));
        if !cert.exists() {
            self.signed(&stem, user, "client");
        }
        (cert, key)
    }

    fn cnf(&self) -> PathBuf {
        self.dir.join("openssl.cnf")
    }

    #[rustfmt::skip]
    fn self_signed(&self, stem: &str, cn: &str) {
        let key = self.dir.join(format!("{stem}.key"));
        let crt = self.dir.join(format!("{stem}.crt"));
        openssl(&[
            "req", "-x509", "-new", "-config", s(&self.cnf()), "-extensions", "ca",
            "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", s(&key), "-out", s(&crt), "-days", "3650", "-subj", &format!("/CN={cn}"),
        ]);
        finish(&key, &crt);
    }

    #[rustfmt::skip]
    fn signed(&self, stem: &str, cn: &str, extensions: &str) {
        static SERIAL: AtomicU64 = AtomicU64::new(1);
        let key = self.dir.join(format!("{stem}.key"));
        let csr = self.dir.join(format!("{stem}.csr"));
        let crt = self.dir.join(format!("{stem}.crt"));
        openssl(&[
            "req", "-new", "-config", s(&self.cnf()), "-newkey", "ec", "-pkeyopt",
            "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", s(&key), "-out", s(&csr),
            "-subj", &format!("/CN={cn}"),
        ]);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let serial = format!("0x{:x}{:04x}", nanos, SERIAL.fetch_add(1, Ordering::Relaxed));
        openssl(&[
            "x509", "-req", "-in", s(&csr), "-CA", s(&self.ca_cert()), "-CAkey",
            s(&self.dir.join("ca.key")), "-set_serial", &serial, "-days", "3650", "-extfile",
            s(&self.cnf()), "-extensions", extensions, "-out", s(&crt),
        ]);
        let _ = fs::remove_file(csr);
        finish(&key, &crt);
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn finish(key: &Path, crt: &Path) {
    fs::set_permissions(key, fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(crt, fs::Permissions::from_mode(0o644)).unwrap();
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl (apt-get install openssl): {e}"));
    assert!(
        out.status.success(),
        "openssl {} failed: {}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
