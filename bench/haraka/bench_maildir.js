'use strict'
// Queue plugin for bench/ingest.py (server `haraka-maildir`): writes each message into one
// Maildir with the durability contract of Postfix and mailflow — write tmp/NAME, fsync it,
// rename to new/NAME, fsync new/ — and only then answers 250. Haraka has no Maildir queue.
// The Maildir is the first line of config/bench_maildir (default: <instance>/maildir).
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')

let seq = 0

exports.register = function () {
    const dir = (this.config.get('bench_maildir', 'value') || '').trim()
    this.maildir = dir || path.join(process.env.HARAKA || process.cwd(), 'maildir')
    for (const sub of ['tmp', 'new', 'cur']) {
        fs.mkdirSync(path.join(this.maildir, sub), { recursive: true })
    }
    this.host = os.hostname().replace(/[/:]/g, '_')
    this.register_hook('queue', 'deliver')
}

exports.deliver = function (next, connection) {
    const txn = connection.transaction
    const now = process.hrtime.bigint()
    const name = `${Math.floor(Date.now() / 1000)}.M${now % 1000000n}P${process.pid}Q${++seq}.${this.host}`
    const tmp = path.join(this.maildir, 'tmp', name)
    const dst = path.join(this.maildir, 'new', name)
    const newdir = path.join(this.maildir, 'new')
    let done = false
    const fail = (what, err) => {
        if (done) return
        done = true
        connection.logerror(this, `${what}: ${err.message}`)
        fs.unlink(tmp, () => next(DENYSOFT, 'maildir write failed'))
    }
    fs.open(tmp, 'wx', 0o600, (err, fd) => {
        if (err) return fail('open', err)
        const ws = fs.createWriteStream(null, { fd, autoClose: false })
        ws.on('error', (e) => fs.close(fd, () => fail('write', e)))
        ws.on('finish', () => {
            fs.fsync(fd, (e1) => {
                fs.close(fd, (e2) => {
                    if (e1 || e2) return fail('fsync', e1 || e2)
                    fs.rename(tmp, dst, (e3) => {
                        if (e3) return fail('rename', e3)
                        fs.open(newdir, 'r', (e4, dfd) => {
                            if (e4) return fail('open new/', e4)
                            fs.fsync(dfd, (e5) => {
                                fs.close(dfd, () => {
                                    if (e5) return fail('fsync new/', e5)
                                    done = true
                                    next(OK, 'queued in Maildir')
                                })
                            })
                        })
                    })
                })
            })
        })
        txn.message_stream.pipe(ws, { line_endings: '\n' })
    })
}
