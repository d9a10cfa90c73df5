# The NHWC (channels-last) plan: a sample is S rows of C channels. Blocks of
# rows are reduced per channel (vectorized over C), then the channels merge
# into their group; the per-channel coefficients go into a small table that
# the apply reads a line of rows at a time. When the samples divide evenly
# among the threads, each thread takes whole samples (nhwc_samples);
# otherwise all threads share each phase between barriers (nhwc_thread).
# Entry: run_nhwc.

cdef struct GroupsNHWC:
    Py_ssize_t rows, channels, groups, channels_per_group
    # Rows are handled `line_rows` at a time as one line of line_rows * C
    # lanes (lane j holds channel j % C): a short row (C = 32) would
    # otherwise pay a loop's overhead for two vectors of work.
    Py_ssize_t line_rows, line
    # The coefficient tables' lines (head, a, b per sample) are table_line =
    # line + TABLE_PAD apart: lane j < TABLE_PAD is repeated at line + j, so
    # the streamed apply (gn_affine_stream_rows) loads whole vectors across
    # a line's end.
    Py_ssize_t table_line
    # Statistics blocks: block_rows rows (a multiple of line_rows, >= 64 and
    # ~64K elements): each block's per-channel and per-group work (~15
    # cycles a channel) was a third of the statistics at 8K elements.
    Py_ssize_t block_rows, blocks_per_sample
    double eps
    int activation
    # Store y past the cache (see GroupsNCHW.stream)
    bint stream
    # Per (sample, group): 1 if a channel's scale overflows the working
    # precision (see affine_coefficients), and the group's mean and rstd.
    unsigned char* exact
    double* stats


cdef inline void nhwc_geometry(GroupsNHWC* g, Py_ssize_t rows, Py_ssize_t channels,
                               Py_ssize_t groups) noexcept nogil:
    g.rows = rows
    g.channels = channels
    g.groups = groups
    g.channels_per_group = channels // groups
    g.line_rows = max(1, LINE // channels)
    g.line = g.line_rows * channels
    g.table_line = g.line + TABLE_PAD
    g.block_rows = max(<Py_ssize_t>ROWS, (NHWC_BLOCK // channels) // g.line_rows * g.line_rows)
    g.block_rows = (g.block_rows + g.line_rows - 1) // g.line_rows * g.line_rows
    g.blocks_per_sample = (rows + g.block_rows - 1) // g.block_rows


cdef extern from "_prefetch.h":
    # prefetch [p + 16 KiB, + nbytes) into L2 for reading (see _prefetch.h)
    void prefetch_ahead "gn_prefetch_ahead"(const void* p, Py_ssize_t nbytes) noexcept nogil
    # prefetch [p, p + nbytes) into L2 for reading
    void prefetch "gn_prefetch"(const void* p, Py_ssize_t nbytes) noexcept nogil


cdef inline void prefetch_spread_rows(const real* x, Py_ssize_t b, GroupsNHWC* g) noexcept nogil:
    """Prefetch the rows block b's centre reads (see channel_sums) but its
    first: they lie ahead of the stream, and without this every block started
    with their misses."""
    cdef Py_ssize_t first = (b % g.blocks_per_sample) * g.block_rows
    cdef Py_ssize_t rows = min(g.block_rows, g.rows - first)
    cdef const real* block = x + ((b // g.blocks_per_sample) * g.rows + first) * g.channels
    cdef Py_ssize_t i
    for i in range(1, 8):
        prefetch(block + ((i * rows) // 8) * g.channels, g.channels * sizeof(real))


cdef inline void lane_sums(const real* x, Py_ssize_t n, const real* centre, real* acc_d,
                           real* acc_dd) noexcept nogil:
    """acc_d[j] += x[j] - centre[j], acc_dd[j] += (x[j] - centre[j])**2, j < n."""
    cdef Py_ssize_t j
    cdef real d
    for j in range(n):
        d = x[j] - centre[j]
        acc_d[j] += d
        acc_dd[j] += d * d


cdef inline void lane_sums2(const real* x, const real* x2, Py_ssize_t n, const real* centre,
                            real* acc_d, real* acc_dd) noexcept nogil:
    """lane_sums over two lines at once: half the accumulator loads and stores."""
    cdef Py_ssize_t j
    cdef real d, e
    for j in range(n):
        d = x[j] - centre[j]
        e = x2[j] - centre[j]
        acc_d[j] += d + e
        acc_dd[j] += d * d + e * e


cdef inline void line_run_sums(const real* x, Py_ssize_t lines, Py_ssize_t width,
                               const real* centre, real* acc_d, real* acc_dd) noexcept nogil:
    """lane_sums over `lines` consecutive lines of `width` lanes, two at a time."""
    cdef Py_ssize_t k
    for k in range(lines // 2):
        prefetch_ahead(x + 2 * k * width, 2 * width * sizeof(real))
        lane_sums2(x + 2 * k * width, x + (2 * k + 1) * width, width, centre, acc_d, acc_dd)
    if lines % 2:
        lane_sums(x + (lines - 1) * width, width, centre, acc_d, acc_dd)


cdef inline void flush_sums(real* acc_d, real* acc_dd, double* sum_d, double* sum_dd,
                            Py_ssize_t n) noexcept nogil:
    """Add the working-precision sums into the float64 ones and reset them."""
    cdef Py_ssize_t j
    for j in range(n):
        sum_d[j] += acc_d[j]
        sum_dd[j] += acc_dd[j]
        acc_d[j] = 0
        acc_dd[j] = 0


cdef inline void channel_sums(const real* x, Py_ssize_t rows, GroupsNHWC* g, real* centre,
                              real* acc_d, real* acc_dd, double* sum_d,
                              double* sum_dd) noexcept nogil:
    """Per-channel shifted sums over `rows` contiguous rows, into the first C
    entries of sum_d / sum_dd (float64; each g.line long, as are centre,
    acc_d and acc_dd). Centred per channel on the mean of 8 rows spread over
    the block. Rows are walked in memory order, a line (line_rows rows) at a
    time, into line-long working-precision accumulators in L1; every
    SUB_LINES lines those are added into the float64 sums, so no lane's
    working-precision sum runs over more than SUB_LINES terms however long
    the block (long blocks: the per-block channel and group work is paid
    once per ~64K elements). The line's replicas fold in float64 at the end."""
    cdef Py_ssize_t nc = g.channels, width = g.line
    cdef Py_ssize_t lines = rows // g.line_rows
    cdef Py_ssize_t r, k, j, lanes, start, tail
    cdef const real* row
    cdef real local[LANES]   # a local array cannot alias x: this loop vectorizes
    # offsets of the 8 rows spread over the block
    cdef Py_ssize_t r0 = 0, r1 = (rows // 8) * nc, r2 = ((2 * rows) // 8) * nc
    cdef Py_ssize_t r3 = ((3 * rows) // 8) * nc, r4 = ((4 * rows) // 8) * nc
    cdef Py_ssize_t r5 = ((5 * rows) // 8) * nc, r6 = ((6 * rows) // 8) * nc
    cdef Py_ssize_t r7 = ((7 * rows) // 8) * nc
    for k in range((nc + LANES - 1) // LANES):
        lanes = min(<Py_ssize_t>LANES, nc - k * LANES)
        row = x + k * LANES
        for j in range(LANES):  # the 8 spread rows summed pairwise (exact if equal)
            local[j] = ((((row[r0 + j] + row[r1 + j]) + (row[r2 + j] + row[r3 + j]))
                         + ((row[r4 + j] + row[r5 + j]) + (row[r6 + j] + row[r7 + j])))
                        * <real>0.125) if j < lanes else 0
        for j in range(lanes):
            centre[k * LANES + j] = local[j]
    for j in range(nc, width):
        centre[j] = centre[j - nc]
    for j in range(width):
        acc_d[j] = 0
        acc_dd[j] = 0
        sum_d[j] = 0
        sum_dd[j] = 0
    for k in range((lines + SUB_LINES - 1) // SUB_LINES):
        start = k * SUB_LINES
        line_run_sums(x + start * width, min(<Py_ssize_t>SUB_LINES, lines - start), width, centre,
                      acc_d, acc_dd)
        flush_sums(acc_d, acc_dd, sum_d, sum_dd, width)
    tail = (rows - lines * g.line_rows) * nc   # a last, partial line
    lane_sums(x + lines * width, tail, centre, acc_d, acc_dd)
    flush_sums(acc_d, acc_dd, sum_d, sum_dd, tail)
    for r in range(1, g.line_rows):  # fold the line's replicas, in order
        for j in range(nc):
            sum_d[j] += sum_d[r * nc + j]
            sum_dd[j] += sum_dd[r * nc + j]


cdef inline void add_residual_rows(const real* x, const real* skip, const real* skip_bias,
                                   real* dst, Py_ssize_t rows, Py_ssize_t nc) noexcept nogil:
    """dst = x + skip + skip_bias over `rows` contiguous rows of nc channels."""
    cdef Py_ssize_t r, ch
    for r in range(rows):
        for ch in range(nc):
            dst[r * nc + ch] = (x[r * nc + ch] + (skip[r * nc + ch] if skip != NULL else 0)) \
                               + (skip_bias[ch] if skip_bias != NULL else 0)


cdef inline int block_stats(const real* x, const real* skip, const real* skip_bias, real* buf,
                            Py_ssize_t b, Py_ssize_t blocks, GroupsNHWC* g,
                            Moments* parts) noexcept nogil:
    """Moments of each group over one block of rows of one sample, into
    parts[b * groups + group]: per-channel shifted sums, then each group's
    channels combined. Returns -1 if out of memory."""
    cdef Py_ssize_t nc = g.channels
    cdef Py_ssize_t first = (b % g.blocks_per_sample) * g.block_rows
    cdef Py_ssize_t rows = min(g.block_rows, g.rows - first)
    cdef Py_ssize_t offset = ((b // g.blocks_per_sample) * g.rows + first) * nc
    cdef Py_ssize_t k, ch
    cdef real* sums = <real*>malloc(3 * g.line * sizeof(real))
    cdef double* wide = <double*>malloc(2 * g.line * sizeof(double))
    cdef Moments* channel = <Moments*>malloc(nc * sizeof(Moments))
    cdef real* centre = sums
    cdef real* acc_d = sums + g.line
    cdef real* acc_dd = sums + 2 * g.line
    cdef double* sum_d = wide
    cdef double* sum_dd = wide + g.line
    cdef double inv_rows = 1.0 / rows
    if sums == NULL or wide == NULL or channel == NULL:
        free(sums)
        free(wide)
        free(channel)
        return -1
    if buf != NULL:
        add_residual_rows(x + offset, shift(skip, offset), skip_bias, buf + offset, rows, nc)
        x = buf
    elif b + 1 < blocks:
        prefetch_spread_rows(x, b + 1, g)
    channel_sums(x + offset, rows, g, centre, acc_d, acc_dd, sum_d, sum_dd)
    for ch in range(nc):
        channel[ch].count = rows
        channel[ch].scale = 1
        channel[ch].mean = centre[ch] + sum_d[ch] * inv_rows
        channel[ch].m2 = max(sum_dd[ch] - sum_d[ch] * (sum_d[ch] * inv_rows), 0.0)
    for k in range(g.groups):
        parts[b * g.groups + k] = combine_equal(channel + k * g.channels_per_group,
                                                g.channels_per_group, 1)
    free(sums)
    free(wide)
    free(channel)
    return 0


cdef inline void merge_blocks_at(const real* src, Py_ssize_t p, GroupsNHWC* g, Moments* parts,
                                 const real* weight, const real* bias, real* table) noexcept nogil:
    """Merge the blocks of (sample, group) pair p in block order; write its
    channels' head / a / b into table[(n * 3 + {0,1,2}) * line + lane], for
    every lane of the line that holds one of its channels."""
    cdef Py_ssize_t n = p // g.groups
    cdef Py_ssize_t k = p % g.groups
    cdef Py_ssize_t blk, ch
    cdef Moments m
    cdef double rstd
    cdef real* head = table + (n * 3) * g.table_line
    cdef real* a = head + g.table_line
    cdef real* b = a + g.table_line
    cdef Py_ssize_t r, lane
    cdef Py_ssize_t full = g.rows // g.block_rows   # blocks of exactly block_rows rows
    cdef const Moments* first = parts + (n * g.blocks_per_sample) * g.groups + k
    reset_moments(&m)
    if full > 0:
        m = combine_equal(first, full, g.groups)
    if full < g.blocks_per_sample:
        merge_moments(&m, first[full * g.groups])
    if needs_exact_moments(src, m, g.eps):
        m = exact_moments(src + n * g.rows * g.channels + k * g.channels_per_group, g.rows,
                          g.channels_per_group, g.channels)
    rstd = inv_std(m, g.eps)
    g.exact[p] = 0
    g.stats[2 * p] = m.mean
    g.stats[2 * p + 1] = rstd
    for ch in range(k * g.channels_per_group, (k + 1) * g.channels_per_group):
        if affine_coefficients(m.mean, rstd, weight, bias, ch, &head[ch], &a[ch], &b[ch]):
            g.exact[p] = 1
        for r in range(g.line_rows):
            lane = r * g.channels + ch
            head[lane] = head[ch]
            a[lane] = a[ch]
            b[lane] = b[ch]
            if lane < TABLE_PAD:
                head[g.line + lane] = head[ch]
                a[g.line + lane] = a[ch]
                b[g.line + lane] = b[ch]


cdef extern from "_runs.h":
    # y = (x - head[j]) * a[j] + b[j] over rows of `width` lanes (see
    # _runs.h); GNCPU_HAVE_VECTOR_RUNS is 0 without GCC vector extensions.
    void affine_rows_f32 "gn_affine_rows_f32"(const float* x, float* y, Py_ssize_t rows,
                                               Py_ssize_t width, const float* head,
                                               const float* a, const float* b) noexcept nogil
    void affine_rows_f64 "gn_affine_rows_f64"(const double* x, double* y, Py_ssize_t rows,
                                               Py_ssize_t width, const double* head,
                                               const double* a, const double* b) noexcept nogil


cdef inline void affine_rows(const real* x, real* y, Py_ssize_t rows, Py_ssize_t width,
                             const real* head, const real* a, const real* b) noexcept nogil:
    if real is float:
        affine_rows_f32(x, y, rows, width, head, a, b)
    else:
        affine_rows_f64(x, y, rows, width, head, a, b)


cdef inline void affine_stream_rows(const real* x, real* y, Py_ssize_t n, Py_ssize_t line,
                                    const real* head, const real* a, const real* b) noexcept nogil:
    if real is float:
        affine_stream_rows_f32(x, y, n, line, head, a, b)
    else:
        affine_stream_rows_f64(x, y, n, line, head, a, b)


cdef inline void apply_block(const real* src, real* y, const real* weight, const real* bias,
                             Py_ssize_t blk, GroupsNHWC* g, const real* table) noexcept nogil:
    """Normalize one block of rows in memory order with the sample's per-lane
    coefficients (3 lines in `table`, L1-resident). Without activation, the
    block is one vector loop (_runs.h) or, stored past the cache, one
    streamed run (_stream.h); otherwise a line at a time (affine_table)."""
    cdef Py_ssize_t n = blk // g.blocks_per_sample
    cdef Py_ssize_t first = (blk % g.blocks_per_sample) * g.block_rows
    cdef Py_ssize_t stop = min(first + g.block_rows, g.rows)
    cdef Py_ssize_t k, r
    cdef Py_ssize_t offset = (n * g.rows + first) * g.channels
    cdef const real* head = table + (n * 3) * g.table_line
    cdef const real* a = head + g.table_line
    cdef const real* b = a + g.table_line
    cdef Py_ssize_t lines = (stop - first) // g.line_rows
    for k in range(g.groups):
        if g.exact[n * g.groups + k]:
            apply_block_by_group(src, y, weight, bias, n, first, stop, g, head)
            return
    if g.activation == ACT_NONE:
        if g.stream and GNCPU_STREAM_ROWS:
            # one run: per line, each line's partial head and tail vectors
            # would mix ordinary and streaming stores in one cache line
            affine_stream_rows(src + offset, y + offset, (stop - first) * g.channels, g.line,
                               head, a, b)
            return
        if GNCPU_HAVE_VECTOR_RUNS and not (g.stream and GNCPU_HAVE_STREAM):
            # whole lines, then the sample's last, partial line
            affine_rows(src + offset, y + offset, lines, g.line, head, a, b)
            affine_rows(src + offset + lines * g.line, y + offset + lines * g.line, 1,
                        (stop - first - lines * g.line_rows) * g.channels, head, a, b)
            return
    for k in range((stop - first + g.line_rows - 1) // g.line_rows):
        r = first + k * g.line_rows
        affine_table(src + offset + k * g.line, y + offset + k * g.line,
                     min(g.line_rows, stop - r) * g.channels, head, a, b, g.activation, g.stream)


cdef inline void apply_block_by_group(const real* src, real* y, const real* weight,
                                      const real* bias, Py_ssize_t n, Py_ssize_t first,
                                      Py_ssize_t stop, GroupsNHWC* g,
                                      const real* head) noexcept nogil:
    """apply_block for a sample with a group whose scale overflows the
    working precision: row by row, group by group, those groups in float64."""
    cdef Py_ssize_t r, k, p, ch, offset
    cdef Py_ssize_t cpg = g.channels_per_group
    for r in range(first, stop):
        for k in range(g.groups):
            p = n * g.groups + k
            ch = k * cpg
            offset = (n * g.rows + r) * g.channels + ch
            if g.exact[p]:
                for ch in range(k * cpg, (k + 1) * cpg):
                    apply_exact(src + offset - k * cpg + ch, y + offset - k * cpg + ch, 1,
                                g.stats[2 * p], g.stats[2 * p + 1], weight, bias, ch,
                                g.activation)
            else:
                affine_table(src + offset, y + offset, cpg, head + ch, head + g.table_line + ch,
                             head + 2 * g.table_line + ch, g.activation, g.stream)


cdef inline void nhwc_thread(const real* x, real* y, const real* skip, real* buf,
                             const real* weight, const real* bias, const real* skip_bias,
                             Py_ssize_t t, Py_ssize_t threads, Py_ssize_t n, GroupsNHWC* g,
                             Moments* parts, real* table, int* failed) noexcept nogil:
    """Thread t's part of the NHWC kernel, in one parallel region: moments of
    its share of the (sample, row block)s; barrier; merges of its share of
    the (sample, group) pairs into the coefficient table; barrier; the apply
    of its share of blocks in memory order (last-read first kept the last
    blocks' L2 hits but walked memory backwards, past the hardware prefetcher:
    a forward apply took 0.75-0.85 of the time on 5-25 MiB, Zen 4). *failed (shared)
    is set if scratch memory ran out; every thread then stops after the
    first barrier."""
    cdef Py_ssize_t blocks = n * g.blocks_per_sample
    cdef Py_ssize_t b, p
    cdef const real* src = x
    if buf != NULL:
        src = buf
    for b in range(share_start(blocks, t, threads), share_start(blocks, t + 1, threads)):
        if block_stats(x, skip, skip_bias, buf, b, blocks, g, parts) != 0:
            failed[0] = 1
            break
    gncpu_barrier()
    if failed[0]:
        return
    for p in range(share_start(n * g.groups, t, threads), share_start(n * g.groups, t + 1, threads)):
        merge_blocks_at(src, p, g, parts, weight, bias, table)
    gncpu_barrier()
    for b in range(share_start(blocks, t, threads), share_start(blocks, t + 1, threads)):
        apply_block(src, y, weight, bias, b, g, table)
    if g.stream:
        store_fence()


cdef inline void nhwc_samples(const real* x, real* y, const real* skip, real* buf,
                              const real* weight, const real* bias, const real* skip_bias,
                              Py_ssize_t t, Py_ssize_t threads, Py_ssize_t n, GroupsNHWC* g,
                              Moments* parts, real* table, int* failed) noexcept nogil:
    """Thread t's part of the NHWC kernel when the samples divide evenly
    among the threads: its contiguous share of whole samples, each taken from
    statistics to apply before the next, with no barrier. A sample's x is
    then read the second time while it is still in L2/L3, where nhwc_thread's
    statistics of every sample first would have pushed it out. The same
    blocks and merges as nhwc_thread, so the same bits."""
    cdef Py_ssize_t sample, b, p
    cdef Py_ssize_t blocks = n * g.blocks_per_sample
    cdef const real* src = x
    if buf != NULL:
        src = buf
    for sample in range(share_start(n, t, threads), share_start(n, t + 1, threads)):
        for b in range(sample * g.blocks_per_sample, (sample + 1) * g.blocks_per_sample):
            if block_stats(x, skip, skip_bias, buf, b, blocks, g, parts) != 0:
                failed[0] = 1
                return
        for p in range(sample * g.groups, (sample + 1) * g.groups):
            merge_blocks_at(src, p, g, parts, weight, bias, table)
        for b in range(sample * g.blocks_per_sample, (sample + 1) * g.blocks_per_sample):
            apply_block(src, y, weight, bias, b, g, table)
    if g.stream:
        store_fence()


cdef int run_nhwc(const real* x, real* y, const real* skip, real* buf, const real* weight,
                  const real* bias, const real* skip_bias, Py_ssize_t n, GroupsNHWC* g,
                  int threads) noexcept nogil:
    """Returns 0, or -1 if out of memory. Blocks and merge order do not
    depend on the thread count."""
    cdef int failed = 0
    cdef Moments* parts = <Moments*>malloc(n * g.blocks_per_sample * g.groups * sizeof(Moments))
    cdef real* table = <real*>malloc(n * 3 * g.table_line * sizeof(real))
    g.exact = <unsigned char*>malloc(n * g.groups)
    g.stats = <double*>malloc(n * g.groups * 2 * sizeof(double))
    if parts != NULL and table != NULL and g.exact != NULL and g.stats != NULL:
        if threads == 1:  # no parallel region at all: opening one costs ~1 us
            nhwc_samples(x, y, skip, buf, weight, bias, skip_bias, 0, 1, n, g, parts, table,
                         &failed)
        elif n % threads == 0:
            with parallel(num_threads=threads):
                nhwc_samples(x, y, skip, buf, weight, bias, skip_bias, threadid(),
                             omp_get_num_threads(), n, g, parts, table, &failed)
        else:
            with parallel(num_threads=threads):
                nhwc_thread(x, y, skip, buf, weight, bias, skip_bias, threadid(),
                            omp_get_num_threads(), n, g, parts, table, &failed)
    else:
        failed = 1
    free(parts)
    free(table)
    free(g.exact)
    free(g.stats)
    return -1 if failed else 0
