"""The README's Python example: run from the repository's root with the
package's venv (scripts/python.sh): target/python/venv/bin/python examples/python/quickstart.py"""

import itertools

import wpool

K = "target/kernels/wasip2/"
with wpool.Pool(K + "primes.wasm", processes=2, timeout=2.0, memory="256MiB") as pool:
    print(pool.map(["100", "1000", "10000"]))             # [b'25', b'168', b'1229']
    endless = (str(n) for n in itertools.count(100, 100))  # pulled as workers take items
    for n, count in zip(range(3), pool.imap(endless)):
        print(n, count)                                   # 0 b'25', 1 b'46', 2 b'62'

with wpool.Pool(K + "hostile.wasm", processes=2, timeout=0.5, text=True) as pool:
    print(pool.map(["hello", "err:no thanks", "spin"], return_exceptions=True))
    try:
        pool.map(["hello", "panic:boom"])
    except wpool.Trap as e:
        print(type(e).__name__, e.index, e.kind, e.attempts)

counts = wpool.mapreduce(K + "wordcount.wasm", K + "sum.wasm",
                         ["the cat", "the dog"], text=True)
print(counts)                                             # {'cat': '1', 'dog': '1', 'the': '2'}
