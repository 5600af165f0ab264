#!/usr/bin/env bash
# A private CA and a server certificate it signs, for `prune-server --tls-cert/--tls-key` and
# `prunectl --ca-cert` (the README's TLS recipe; tests/security.rs runs exactly this script).
#
#   scripts/tls-certs.sh DIR [NAME...]     NAME: DNS names or IP addresses the server is reached
#                                         by (default: localhost 127.0.0.1)
#
# Writes DIR/ca.pem, DIR/ca.key (keep it private), DIR/server.pem, DIR/server.key. Why not one
# self-signed certificate: OpenSSL 3's `req -x509` marks it CA:TRUE, and rustls refuses a CA
# certificate as a server's own (CaUsedAsEndEntity). The server certificate here says
# CA:FALSE and serverAuth, and names every address in its subjectAltName.
set -euo pipefail
dir=${1:?usage: scripts/tls-certs.sh DIR [NAME...]}
shift
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(localhost 127.0.0.1)
san=""
for n in "${names[@]}"; do
    if [[ $n =~ ^[0-9.]+$ || $n == *:* ]]; then san+="IP:$n,"; else san+="DNS:$n,"; fi
done
mkdir -p "$dir"
cd "$dir"
openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=prune private CA" \
    -keyout ca.key -out ca.pem \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=${names[0]}" -keyout server.key -out server.csr 2>/dev/null
printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=%s\n' \
    "${san%,}" > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 \
    -extfile server.ext -out server.pem 2>/dev/null
rm -f server.csr server.ext ca.srl
chmod 600 ca.key server.key
echo "wrote $dir/ca.pem $dir/server.pem $dir/server.key (for ${names[*]})"
