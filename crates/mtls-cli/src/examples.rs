//! The examples every command's `--help` ends with (and `docs/cli.md` shows).

pub const CA_INIT: &str = "Examples:
  mtls ca init
  mtls ca init --org \"Example Corp\" --encrypt --passphrase-file ca.pass --root-passphrase-file root.pass
  mtls --pki /etc/mtls/pki ca init --database postgres://mtls@db/mtls";

pub const CA_INTERMEDIATE: &str = "Examples:
  mtls ca intermediate --root-cert /media/usb/root.crt --root-key /media/usb/root.key \\
      --root-passphrase-file root.pass --encrypt --passphrase-file intermediate.pass";

pub const CA_ROOT_CRL: &str = "Examples:
  mtls ca root-crl --root-cert /media/usb/root.crt --root-key /media/usb/root.key
  mtls ca root-crl --root-cert /media/usb/root.crt --root-key /media/usb/root.key \\
      --revoke old-intermediate.crt --reason keyCompromise
  mtls gateway … --client-ca pki/ca-chain.pem --crl pki/crl.pem --crl pki/root-crl.pem";

pub const CA_SERVE: &str = "Examples:
  mtls ca serve --config ca.toml
  mtls ca serve --config /etc/mtls/ca.toml --ca-passphrase-file /etc/mtls/ca.pass";

pub const CA_RECONCILE: &str = "Examples:
  cp backup/inventory.db pki/inventory.db && mtls ca reconcile && mtls crl";

pub const CA_TOKEN: &str = "Examples:
  mtls ca token --name api-client
  mtls ca token --name api.example.com --san api.example.com --profile server --ttl 30m";

pub const ISSUE_SERVER: &str = "Examples:
  mtls issue server localhost 127.0.0.1
  mtls issue server api.example.com --uri spiffe://example.org/ns/prod/sa/api --days 30";

pub const ISSUE_CLIENT: &str = "Examples:
  mtls issue client client-app
  mtls issue client ops-admin --ou ops --encrypt --passphrase-file admin.pass";

pub const CSR: &str = "Examples:
  mtls csr --cn api.example.com --san api.example.com --key-out api.key --csr-out api.csr";

pub const SIGN: &str = "Examples:
  mtls sign --csr api.csr --profile server
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=app \\
      -keyout app.key -out app.csr && mtls sign --csr app.csr --profile client";

pub const LIST: &str = "Examples:
  mtls list
  mtls list --expiring 30d
  mtls list --revoked --json";

pub const REVOKE: &str = "Examples:
  mtls revoke 7003a60cb2dd6167e69b672cac89412b --reason keyCompromise && mtls crl
  mtls revoke --cert pki/issued/client-app.crt";

pub const CRL: &str = "Examples:
  mtls crl
  mtls crl --days 1 --der --out /var/www/crl.der";

pub const INSPECT: &str = "Examples:
  mtls inspect pki/issued/client-app.crt
  mtls inspect pki/crl.pem --json";

pub const VERIFY: &str = "Examples:
  mtls verify pki/issued/client-app.crt --ca pki/ca-chain.pem --purpose client
  mtls verify server.chain.pem --ca root.crt --purpose server --name api.example.com --crl crl.pem
  mtls verify pki/issued/client-app.crt --ca pki/ca-chain.pem --ocsp";

pub const EXPORT_PKCS12: &str = "Examples:
  mtls export pkcs12 --cert pki/issued/client-app.chain.pem --key pki/issued/client-app.key \\
      --out client-app.p12 --password-file p12.pass
  mtls export pkcs12 --compat --cert app.chain.pem --key app.key --out app-macos.p12";

pub const GATEWAY: &str = "Examples:
  mtls gateway --listen 127.0.0.1:8443 --cert pki/issued/localhost.chain.pem \\
      --key pki/issued/localhost.key --client-ca pki/ca-chain.pem \\
      --upstream http://127.0.0.1:3000 --allow-cn client-app
  mtls gateway --config gateway.toml";

pub const REQUEST: &str = "Examples:
  mtls request https://localhost:8443/api/secure --cert pki/issued/client-app.chain.pem \\
      --key pki/issued/client-app.key --ca pki/root.crt
  mtls request -v -X POST -d '{\"a\":1}' -H 'Content-Type: application/json' \\
      https://api.example.com/items --cert app.chain.pem --key app.key --ca root.crt";

pub const TUNNEL: &str = "Examples:
  mtls tunnel --listen 127.0.0.1:5432 --target db.example.com:5433 \\
      --cert app.chain.pem --key app.key --ca root.crt";

pub const ENROLL: &str = "Examples:
  mtls enroll --ca-url https://ca.example.com:9443 --ca-fingerprint sha256:48f2… \\
      --token-file token --out /etc/mtls/app
  ssh ca.example.com mtls ca token --name app | mtls enroll --token-file - \\
      --ca-url https://ca.example.com:9443 --ca-fingerprint sha256:48f2… --out ./id";

pub const RENEW: &str = "Examples:
  mtls renew --cert app.chain.pem --key app.key --ca-url https://ca.example.com:9443
  mtls renew --daemon --cert app.chain.pem --key app.key --ca-url https://ca.example.com:9443 \\
      --signal /run/gateway.pid:HUP --metrics-listen 127.0.0.1:9101";

pub const COMPLETIONS: &str = "Examples:
  mtls completions bash > /etc/bash_completion.d/mtls
  mtls completions zsh > \"${fpath[1]}/_mtls\"";

pub const DOCTOR: &str = "Examples:
  mtls doctor pki
  mtls doctor --config gateway.toml --config ca.toml --json
  mtls doctor /etc/mtls --expiring-within 14d || echo \"fix the findings\"";

pub const EXPLAIN: &str = "Examples:
  mtls explain pki/issued/client-app.chain.pem --config gateway.toml --path /admin
  mtls explain client.crt --config gateway.toml --listener public --json";

pub const MONITOR: &str = "Examples:
  mtls monitor --listen 127.0.0.1:9102 /etc/mtls/gateway pki/crl.pem
  mtls monitor --listen 127.0.0.1:9102 --inventory --database postgres://mtls@db/mtls";

pub const QUICKSTART: &str = "Examples:
  mtls quickstart
  mtls quickstart --dir demo --port 9443";
