#!/usr/bin/env bash
# Builds mtls and creates a demo hierarchy in ./demo/pki: root + intermediate CA, a server
# certificate for api.example.com/localhost/127.0.0.1 and a client certificate, then checks
# them with `mtls verify` and `openssl verify`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p mtls-cli
MTLS="$PWD/target/release/mtls"
mkdir -p demo && cd demo
export MTLS_PKI_DIR="$PWD/pki"
if [ ! -f pki/intermediate.crt ]; then
  "$MTLS" ca init --org "My Organization"
fi
[ -f pki/issued/api.example.com.crt ] || "$MTLS" issue server api.example.com localhost 127.0.0.1
[ -f pki/issued/client-app.crt ] || "$MTLS" issue client client-app --uri spiffe://example.org/ns/demo/sa/client-app
"$MTLS" verify --ca pki/root.crt --purpose server --name api.example.com pki/issued/api.example.com.chain.pem
"$MTLS" verify --ca pki/root.crt --purpose client pki/issued/client-app.chain.pem
openssl verify -CAfile pki/root.crt -untrusted pki/intermediate.crt -purpose sslclient pki/issued/client-app.crt
"$MTLS" list
cat <<EOT

Demo PKI ready in $PWD/pki. Try:
  $MTLS inspect $PWD/pki/issued/client-app.crt
  $MTLS --pki $PWD/pki revoke --cert $PWD/pki/issued/client-app.crt --reason keyCompromise
  $MTLS --pki $PWD/pki crl && openssl crl -in $PWD/pki/crl.pem -CAfile $PWD/pki/intermediate.crt -noout -text
EOT
