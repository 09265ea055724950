// Sends one AS2 message with libas2 (headers written by nodemailer: As2-From, As2-To,
// As2-Version…) and reads the MDN that answers it.
// Input (JSON on stdin): url, ours {id, cert, key}, theirs {id, cert}, payload, filename,
// contentType, encryption (false or a libas2 name), mdnSigning (false or "sha-256").
// Output (JSON on stdout): the header names sent, the HTTP status, the MDN as read.
'use strict';
const fs = require('fs');
const { AS2Composer, request } = require('libas2');

async function main() {
  const o = JSON.parse(fs.readFileSync(0, 'utf8'));
  const ours = { cert: fs.readFileSync(o.ours.cert, 'utf8'), key: fs.readFileSync(o.ours.key, 'utf8') };
  const theirs = fs.readFileSync(o.theirs.cert, 'utf8');
  const composer = new AS2Composer({
    message: {
      filename: o.filename,
      contentType: o.contentType,
      content: fs.readFileSync(o.payload),
    },
    agreement: {
      host: {
        name: o.ours.id, id: o.ours.id, url: 'http://127.0.0.1:9/',
        certificate: ours.cert, privateKey: ours.key,
        decrypt: false, sign: 'sha-256',
        mdn: { async: false, signing: o.mdnSigning },
      },
      partner: {
        name: o.theirs.id, id: o.theirs.id, url: o.url, file: 'XML',
        certificate: theirs, encrypt: o.encryption, verify: true,
      },
    },
  });
  const options = await composer.toRequestOptions(o.url);
  const response = await request(options);
  const result = {
    sentHeaders: Object.keys(options.headers),
    messageId: composer.message.messageId(),
    status: response.statusCode,
    body: response.rawBody.toString('latin1').slice(0, 2000),
  };
  if (response.statusCode === 200) {
    const mime = await response.mime();
    result.mdnSigned = mime.signed;
    const mdn = await mime.dispositionIn(mime.signed ? { cert: theirs } : undefined);
    result.mdn = mdn.notification;
  }
  process.stdout.write('\n' + JSON.stringify(result) + '\n');
}

main().catch((error) => {
  process.stderr.write(String(error && error.stack ? error.stack : error) + '\n');
  process.exit(1);
});
