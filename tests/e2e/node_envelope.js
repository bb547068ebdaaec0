// The original scripts' envelope, written with Node's own crypto, for compatibility tests:
//   node node_envelope.js encrypt|decrypt < input > output   (key: HOST_MASTER_KEY, hex)
'use strict';
const crypto = require('crypto');

const chunks = [];
process.stdin.on('data', (chunk) => chunks.push(chunk));
process.stdin.on('end', () => {
  const key = Buffer.from(process.env.HOST_MASTER_KEY, 'hex');
  const input = Buffer.concat(chunks);
  if (process.argv[2] === 'encrypt') {
    const iv = crypto.randomBytes(12);
    const cipher = crypto.createCipheriv('aes-256-gcm', key, iv);
    const body = Buffer.concat([cipher.update(input), cipher.final()]);
    process.stdout.write(Buffer.concat([Buffer.from([1]), iv, body, cipher.getAuthTag()]));
  } else {
    if (input[0] !== 1) throw new Error('unknown version');
    const decipher = crypto.createDecipheriv('aes-256-gcm', key, input.subarray(1, 13));
    decipher.setAuthTag(input.subarray(input.length - 16));
    const body = input.subarray(13, input.length - 16);
    process.stdout.write(Buffer.concat([decipher.update(body), decipher.final()]));
  }
});
