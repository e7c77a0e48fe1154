// Exact MaxSim on x86 CPUs with AVX2 + FMA + F16C: the compiled kernel behind retriever/cpu_maxsim.py.
//
// Why a kernel (measured on a 2-core AVX2 machine, see cpu_maxsim.py): a BLAS GEMM per block of pages
// writes the (tokens x query rows) similarity block out and reads it back for the max, converts fp16 pages to
// fp32 in a separate pass, and a 20-row query is a skinny GEMM that BLAS runs far below peak. Here each
// page is converted 32 tokens at a time into an L1 buffer and multiplied against the query rows held in
// vector lanes; the max over tokens stays in registers, so nothing but one float per (query, page) leaves.
//
// Layout of the product (queries in lanes): query rows are packed as qT (n_vec, dim, 8): vector v holds rows
// 8v..8v+7, one lane each, dimension by dimension. A micro-tile is T page tokens x J vectors (8J rows):
// for each dimension d, J vector loads of qT and T broadcasts of token[t][d] feed T*J FMAs into T*J
// accumulators (12 of the 16 YMM registers). The running max over a page's tokens is lane-wise, so no
// horizontal reduction and no transpose of the page is needed. Partial tiles repeat the page's last token,
// which leaves a max unchanged.
//
// Built by setup.py as an optional extension without -march flags: only the functions marked TARGET use
// AVX2, and cpu_supported() tells Python whether this CPU can run them. Elsewhere (other x86, aarch64) the
// module still imports, cpu_supported() is False and Python uses the torch path.

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <new>
#include <thread>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_KERNEL 1
#include <immintrin.h>
#define TARGET __attribute__((target("avx2,fma,f16c")))
#else
#define HAVE_KERNEL 0
#endif

namespace {

enum Kind { FP16 = 0, INT8 = 1, FP32 = 2 };

struct Job {
    const void* tokens;
    int kind;
    const float* scales;    // (T,), int8 only
    const int64_t* offsets; // (P + 1,)
    const int64_t* rows;    // (n_pages,) pages to score (indexes into offsets), or null: pages 0 .. n_pages - 1
    int64_t n_pages;
    int dim;
    const float* qT;        // (n_vec, dim, 8)
    int n_vec;
    const int64_t* qoff;    // (Q + 1,): query q owns packed rows qoff[q] .. qoff[q + 1]
    int n_queries;
    float* out;             // (Q, P)
    size_t token_bytes;     // bytes per token row, for prefetching
    size_t total_bytes;     // bytes of the token buffer
    std::vector<int> groups;  // query vectors per micro-tile pass, see vector_groups
};

// One thread's buffers, allocated before any thread starts (an allocation failure is a MemoryError, not a crash).
struct Scratch {
    std::vector<float> buf;  // (CHUNK + MAX_TILE, dim) fp32 tokens
    std::vector<float> rm;   // (n_vec * 8,) running max of every packed query row over the current page
};

#if HAVE_KERNEL

constexpr int CHUNK = 32;        // tokens converted per step: 16 KB of fp32 at dim 128, beside 12 KB of qT in L1
constexpr int MAX_TILE = 12;     // the tallest micro-tile; the buffer has room to pad a chunk up to it
constexpr int PAGES_PER_GRAB = 8;

// T tokens x J query vectors; rm (8J floats) is the running max of these rows over the page.
template <int T, int J>
TARGET inline void micro_tile(const float* buf, const float* qT, int dim, float* rm) {
    __m256 acc[T][J];
    for (int t = 0; t < T; ++t)
        for (int j = 0; j < J; ++j) acc[t][j] = _mm256_setzero_ps();
    const size_t vstride = static_cast<size_t>(dim) * 8;
    for (int d = 0; d < dim; ++d) {
        __m256 q[J];
        for (int j = 0; j < J; ++j) q[j] = _mm256_loadu_ps(qT + j * vstride + d * 8);
        for (int t = 0; t < T; ++t) {
            const __m256 b = _mm256_broadcast_ss(buf + static_cast<size_t>(t) * dim + d);
            for (int j = 0; j < J; ++j) acc[t][j] = _mm256_fmadd_ps(b, q[j], acc[t][j]);
        }
    }
    for (int j = 0; j < J; ++j) {
        __m256 m = acc[0][j];
        for (int t = 1; t < T; ++t) m = _mm256_max_ps(m, acc[t][j]);
        _mm256_storeu_ps(rm + j * 8, _mm256_max_ps(_mm256_loadu_ps(rm + j * 8), m));
    }
}

// All tiles of one converted chunk of n tokens against J vectors. While the FMAs run, the next chunk's
// bytes are prefetched a few lines per tile, so the conversion of the next chunk does not wait on memory.
template <int T, int J>
TARGET void chunk_rows(const float* buf, int n, const float* qT, int dim, float* rm, const char* pf, size_t pf_lines) {
    const int tiles = (n + T - 1) / T;
    const size_t per_tile = (pf_lines + tiles - 1) / tiles;
    size_t line = 0;
    for (int i = 0; i < tiles; ++i) {
        for (size_t k = 0; k < per_tile && line < pf_lines; ++k, ++line) _mm_prefetch(pf + line * 64, _MM_HINT_T0);
        micro_tile<T, J>(buf + static_cast<size_t>(i) * T * dim, qT, dim, rm);
    }
}

// Rows [row0, row0 + n) of the token buffer to fp32 in buf, then copies of the last row up to n_pad.
TARGET void convert(const Job& job, int64_t row0, int n, int n_pad, float* buf) {
    const int dim = job.dim;
    const size_t count = static_cast<size_t>(n) * dim;
    if (job.kind == FP16) {
        const uint16_t* src = static_cast<const uint16_t*>(job.tokens) + row0 * dim;
        for (size_t i = 0; i < count; i += 8)
            _mm256_storeu_ps(buf + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
    } else if (job.kind == INT8) {
        const int8_t* src = static_cast<const int8_t*>(job.tokens) + row0 * dim;
        for (int t = 0; t < n; ++t) {
            const __m256 s = _mm256_set1_ps(job.scales[row0 + t]);
            for (int d = 0; d < dim; d += 8) {
                const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(src + static_cast<size_t>(t) * dim + d));
                const __m256 f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
                _mm256_storeu_ps(buf + static_cast<size_t>(t) * dim + d, _mm256_mul_ps(f, s));
            }
        }
    } else {
        std::memcpy(buf, static_cast<const float*>(job.tokens) + row0 * dim, count * sizeof(float));
    }
    for (int t = n; t < n_pad; ++t)
        std::memcpy(buf + static_cast<size_t>(t) * dim, buf + static_cast<size_t>(n - 1) * dim, dim * sizeof(float));
}

inline int tile_of(int group) { return group == 3 ? 4 : (group == 2 ? 6 : 12); }
inline int round_up(int n, int m) { return (n + m - 1) / m * m; }

// Query vectors are taken three at a time (T=4: 12 accumulators); a remainder of two uses T=6, of one T=12,
// so every micro-tile keeps 12 independent FMA chains in flight. Four left over go as 2 + 2.
std::vector<int> vector_groups(int n_vec) {
    std::vector<int> groups;
    int left = n_vec;
    while (left > 0) {
        const int g = (left == 4) ? 2 : std::min(left, 3);
        groups.push_back(g);
        left -= g;
    }
    return groups;
}

TARGET void worker(const Job& job, Scratch* scratch, std::atomic<int64_t>* next_page) {
    const int dim = job.dim;
    std::vector<float>& buf = scratch->buf;
    std::vector<float>& rm = scratch->rm;
    const std::vector<int>& groups = job.groups;
    const char* base = static_cast<const char*>(job.tokens);
    for (;;) {
        const int64_t p0 = next_page->fetch_add(PAGES_PER_GRAB);
        if (p0 >= job.n_pages) break;
        const int64_t p1 = std::min(job.n_pages, p0 + PAGES_PER_GRAB);
        for (int64_t p = p0; p < p1; ++p) {
            std::fill(rm.begin(), rm.end(), -INFINITY);
            const int64_t page = job.rows ? job.rows[p] : p;
            const int64_t start = job.offsets[page], end = job.offsets[page + 1];
            for (int64_t c = start; c < end; c += CHUNK) {
                const int n = static_cast<int>(std::min<int64_t>(CHUNK, end - c));
                int n_pad = n;
                for (const int g : groups) n_pad = std::max(n_pad, round_up(n, tile_of(g)));
                convert(job, c, n, n_pad, buf.data());
                // the bytes right after this chunk: the rest of the page, then the next page
                const size_t pf_from = static_cast<size_t>(c + n) * job.token_bytes;
                const size_t pf_bytes = pf_from < job.total_bytes
                    ? std::min(static_cast<size_t>(CHUNK) * job.token_bytes, job.total_bytes - pf_from) : 0;
                size_t pf_lines = pf_bytes / 64;
                int v = 0;
                for (const int g : groups) {
                    const float* q = job.qT + static_cast<size_t>(v) * dim * 8;
                    float* r = rm.data() + v * 8;
                    if (g == 3) chunk_rows<4, 3>(buf.data(), n, q, dim, r, base + pf_from, pf_lines);
                    else if (g == 2) chunk_rows<6, 2>(buf.data(), n, q, dim, r, base + pf_from, pf_lines);
                    else chunk_rows<12, 1>(buf.data(), n, q, dim, r, base + pf_from, pf_lines);
                    pf_lines = 0;  // once per chunk is enough
                    v += g;
                }
            }
            for (int qi = 0; qi < job.n_queries; ++qi) {
                float sum = 0.0f;
                for (int64_t r = job.qoff[qi]; r < job.qoff[qi + 1]; ++r) sum += rm[r];
                job.out[static_cast<int64_t>(qi) * job.n_pages + p] = sum;
            }
        }
    }
}

#endif  // HAVE_KERNEL

bool cpu_supported() {
#if HAVE_KERNEL
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
    return false;
#endif
}

// Releases the Py_buffers it holds, whatever the exit path.
struct Buffers {
    Py_buffer b[7] = {};
    ~Buffers() {
        for (auto& x : b)
            if (x.obj) PyBuffer_Release(&x);
    }
};

PyObject* py_maxsim(PyObject*, PyObject* args) {
    Buffers B;
    Py_buffer &tok = B.b[0], &sc = B.b[1], &off = B.b[2], &qT = B.b[3], &qoff = B.b[4], &out = B.b[5];
    Py_buffer& rows = B.b[6];
    int kind, dim, n_threads;
    if (!PyArg_ParseTuple(args, "y*iiy*y*y*y*w*i|y*", &tok, &kind, &dim, &sc, &off, &qT, &qoff, &out, &n_threads,
                          &rows))
        return nullptr;
    if (!cpu_supported()) {
        PyErr_SetString(PyExc_RuntimeError, "this CPU lacks AVX2/FMA/F16C: use the torch path");
        return nullptr;
    }
#if HAVE_KERNEL
    if (kind < FP16 || kind > FP32 || dim <= 0 || dim % 8) {
        PyErr_Format(PyExc_ValueError, "kind %d / dim %d not supported (dim must be a multiple of 8)", kind, dim);
        return nullptr;
    }
    const size_t elt = kind == FP16 ? 2 : (kind == INT8 ? 1 : 4);
    const int64_t P = off.len / 8 - 1, Q = qoff.len / 8 - 1, n_vec = qT.len / (4 * 8 * dim);
    const int64_t* o = static_cast<const int64_t*>(off.buf);
    const int64_t* qo = static_cast<const int64_t*>(qoff.buf);
    const bool some = rows.obj != nullptr && rows.len > 0;
    const int64_t* ro = some ? static_cast<const int64_t*>(rows.buf) : nullptr;
    const int64_t n_out = some ? static_cast<int64_t>(rows.len / 8) : P;
    if (P < 0 || Q < 0 || off.len % 8 || qoff.len % 8 || rows.len % 8 || qT.len % (4 * 8 * dim) ||
        out.len != Q * n_out * 4) {
        PyErr_SetString(PyExc_ValueError, "maxsim: inconsistent buffer sizes");
        return nullptr;
    }
    for (int64_t i = 0; ro && i < n_out; ++i)
        if (ro[i] < 0 || ro[i] >= P) {
            PyErr_SetString(PyExc_ValueError, "maxsim: a row index is out of range");
            return nullptr;
        }
    if (P == 0 || Q == 0 || n_out == 0) Py_RETURN_NONE;
    for (int64_t p = 0; p < P; ++p)
        if (o[p + 1] <= o[p]) {
            PyErr_Format(PyExc_ValueError, "maxsim: page %lld has no tokens (offsets must increase)", (long long)p);
            return nullptr;
        }
    if (o[0] < 0 || static_cast<size_t>(o[P]) * dim * elt > static_cast<size_t>(tok.len) ||
        (kind == INT8 && static_cast<size_t>(o[P]) * 4 > static_cast<size_t>(sc.len))) {
        PyErr_SetString(PyExc_ValueError, "maxsim: offsets point past the tokens (or scales)");
        return nullptr;
    }
    bool rows_ok = qo[0] == 0 && qo[Q] <= n_vec * 8;
    for (int64_t q = 0; q < Q; ++q) rows_ok = rows_ok && qo[q + 1] >= qo[q];
    if (!rows_ok) {
        PyErr_SetString(PyExc_ValueError, "maxsim: bad query row offsets");
        return nullptr;
    }
    const int64_t useful = (n_out + PAGES_PER_GRAB - 1) / PAGES_PER_GRAB;
    const int n = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(n_threads, useful)));
    Job job{tok.buf, kind, static_cast<const float*>(sc.buf), o, ro, n_out, dim, static_cast<const float*>(qT.buf),
            static_cast<int>(n_vec), qo, static_cast<int>(Q), static_cast<float*>(out.buf),
            dim * elt, static_cast<size_t>(tok.len), {}};
    std::vector<Scratch> scratch;
    try {
        job.groups = vector_groups(job.n_vec);
        scratch.resize(n);
        for (auto& sc_ : scratch) {
            sc_.buf.resize(static_cast<size_t>(CHUNK + MAX_TILE) * dim);
            sc_.rm.resize(static_cast<size_t>(n_vec) * 8);
        }
    } catch (const std::bad_alloc&) {
        return PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS
    std::atomic<int64_t> next_page{0};
    std::vector<std::thread> threads;
    for (int i = 1; i < n; ++i) {
        try {
            threads.emplace_back(worker, std::cref(job), &scratch[i], &next_page);
        } catch (...) {
            break;  // fewer threads: the pages are shared dynamically, the calling thread does the rest
        }
    }
    worker(job, &scratch[0], &next_page);
    for (auto& t : threads) t.join();
    Py_END_ALLOW_THREADS
#endif
    Py_RETURN_NONE;
}

// ---- Binary sketches: MaxSim of sign bits (tier 0 of a tiered index) ------------------------------------------
//
// Every vector is its 128 sign bits, two 64-bit words; the similarity of two is their +-1 dot product,
// 128 - 2 * popcount(a ^ b). A page's score for a query is the sum over query rows of the best similarity over
// the page's vectors: MaxSim with 16 bytes a vector and two XOR + POPCNT a pair, against 128 multiply-adds for
// int8. Only the popcount instruction is needed (every AVX2 CPU has it); the row loop is plain C++.

struct HammingJob {
    const uint64_t* codes;    // (T, 2)
    const int64_t* offsets;   // (P + 1,)
    int64_t n_pages;
    const uint64_t* qcodes;   // (R, 2): the packed query rows
    int n_rows;
    const int64_t* qoff;      // (Q + 1,)
    int n_queries;
    float* out;               // (Q, P)
};

#if HAVE_KERNEL
__attribute__((target("popcnt"))) void hamming_worker(const HammingJob& job, std::atomic<int64_t>* next_page) {
    std::vector<int> best(static_cast<size_t>(job.n_rows));
    for (;;) {
        const int64_t p0 = next_page->fetch_add(64);
        if (p0 >= job.n_pages) break;
        const int64_t p1 = std::min(job.n_pages, p0 + 64);
        for (int64_t p = p0; p < p1; ++p) {
            std::fill(best.begin(), best.end(), 129);
            for (int64_t t = job.offsets[p]; t < job.offsets[p + 1]; ++t) {
                const uint64_t a0 = job.codes[2 * t], a1 = job.codes[2 * t + 1];
                for (int r = 0; r < job.n_rows; ++r) {
                    const int h = __builtin_popcountll(a0 ^ job.qcodes[2 * r]) +
                                  __builtin_popcountll(a1 ^ job.qcodes[2 * r + 1]);
                    best[r] = h < best[r] ? h : best[r];
                }
            }
            for (int qi = 0; qi < job.n_queries; ++qi) {
                int sum = 0;
                for (int64_t r = job.qoff[qi]; r < job.qoff[qi + 1]; ++r) sum += 128 - 2 * best[r];
                job.out[static_cast<int64_t>(qi) * job.n_pages + p] = static_cast<float>(sum);
            }
        }
    }
}
#endif

PyObject* py_hamming(PyObject*, PyObject* args) {
    Buffers B;
    Py_buffer &codes = B.b[0], &off = B.b[1], &qcodes = B.b[2], &qoff = B.b[3], &out = B.b[4];
    int n_threads;
    if (!PyArg_ParseTuple(args, "y*y*y*y*w*i", &codes, &off, &qcodes, &qoff, &out, &n_threads)) return nullptr;
#if HAVE_KERNEL
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("popcnt")) {
        PyErr_SetString(PyExc_RuntimeError, "this CPU lacks POPCNT");
        return nullptr;
    }
    const int64_t P = off.len / 8 - 1, Q = qoff.len / 8 - 1, R = qcodes.len / 16, T = codes.len / 16;
    const int64_t* o = static_cast<const int64_t*>(off.buf);
    const int64_t* qo = static_cast<const int64_t*>(qoff.buf);
    if (P < 0 || Q < 0 || off.len % 8 || qoff.len % 8 || codes.len % 16 || qcodes.len % 16 || out.len != Q * P * 4) {
        PyErr_SetString(PyExc_ValueError, "hamming: inconsistent buffer sizes");
        return nullptr;
    }
    if (P == 0 || Q == 0) Py_RETURN_NONE;
    bool ok = o[0] >= 0 && o[P] <= T && qo[0] == 0 && qo[Q] <= R;
    for (int64_t p = 0; ok && p < P; ++p) ok = o[p + 1] >= o[p];
    for (int64_t q = 0; ok && q < Q; ++q) ok = qo[q + 1] >= qo[q];
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "hamming: offsets out of range");
        return nullptr;
    }
    HammingJob job{static_cast<const uint64_t*>(codes.buf), o, P, static_cast<const uint64_t*>(qcodes.buf),
                   static_cast<int>(R), qo, static_cast<int>(Q), static_cast<float*>(out.buf)};
    const int n = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(n_threads, (P + 63) / 64)));
    Py_BEGIN_ALLOW_THREADS
    std::atomic<int64_t> next_page{0};
    std::vector<std::thread> threads;
    for (int i = 1; i < n; ++i) {
        try {
            threads.emplace_back(hamming_worker, std::cref(job), &next_page);
        } catch (...) {
            break;
        }
    }
    hamming_worker(job, &next_page);
    for (auto& t : threads) t.join();
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
#else
    PyErr_SetString(PyExc_RuntimeError, "no binary kernel on this platform");
    return nullptr;
#endif
}

PyObject* py_cpu_supported(PyObject*, PyObject*) { return PyBool_FromLong(cpu_supported()); }

PyMethodDef methods[] = {
    {"maxsim", py_maxsim, METH_VARARGS,
     "maxsim(tokens, kind, dim, scales, offsets, qT, qoff, out, n_threads[, rows]): fill out (Q, P) float32 in "
     "place; with rows (int64 page indexes), out is (Q, len(rows)) for those pages only."},
    {"hamming", py_hamming, METH_VARARGS,
     "hamming(codes, offsets, qcodes, qoff, out, n_threads): fill out (Q, P) float32 with sign-bit MaxSim."},
    {"cpu_supported", py_cpu_supported, METH_NOARGS, "True when this CPU has AVX2, FMA and F16C."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_cpu_maxsim", "Exact MaxSim kernel for AVX2 CPUs.", -1, methods, nullptr, nullptr, nullptr,
    nullptr};

}  // namespace

PyMODINIT_FUNC PyInit__cpu_maxsim(void) { return PyModule_Create(&module); }
