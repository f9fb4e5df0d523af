package dev.phiedge.engine

/**
 * A backend wrapper that keeps the cache what a fresh computation of its tokens would hold, for packages whose cache
 * cannot always go back or forward in place, as runtime/recompute.py and js/recompute.js.
 *
 * LongRoPE (manifest "rope_switch"): the graph rotates with the short tables while a step's total length is at most
 * the switch and with the long ones after, so the cache is "short" up to the switch and "long" beyond:
 *
 *     growing past the switch     length 10, step([a, b, c]) with switch 12: cached keys are short, new ones long
 *                                 -> inner.truncate(0); inner.step(p0 .. p9, a, b, c)
 *     truncating back below it    length 40 (long), truncate(20) with switch 32: a fresh run of 20 tokens is short
 *                                 -> the 20 tokens are fed again, with the next step's ids
 *
 * Sliding window (io.kv_cache "window"): the buffer of C positions evicts the oldest G = C - W + 1 rows at once
 * whenever the sequence passes C, C + G, ...; truncating from T back to n is in place only when no eviction happened
 * between them, else the n tokens are fed again with the next step. [rollbackLimit] keeps verify steps short of it.
 */
interface RecomputeRule {
    /** Whether truncating a cache of [length] positions to [to] leaves what [to] fresh tokens would hold. */
    fun exact(length: Int, to: Int): Boolean

    /** Whether a step of [n] tokens after [past] must feed the whole sequence again. */
    fun crosses(past: Int, n: Int): Boolean

    /** The longest the cache may grow from [length] and be truncated back in place (null: any). */
    fun limit(length: Int): Int?
}

data class RopeSwitch(val switch: Int) : RecomputeRule {
    override fun exact(length: Int, to: Int) = !(length > switch && to <= switch)
    override fun crosses(past: Int, n: Int) = past in 1..switch && past + n > switch
    override fun limit(length: Int): Int? = if (length <= switch) switch else null
}

data class Window(val buffer: Int, val window: Int) : RecomputeRule {
    /** Rows dropped at each eviction. */
    val batch: Int get() = buffer - window + 1

    fun evictions(length: Int): Int = if (length <= buffer) 0 else (length - buffer + batch - 1) / batch

    override fun exact(length: Int, to: Int) = evictions(length) == evictions(to)
    override fun crosses(past: Int, n: Int) = false
    override fun limit(length: Int): Int? = buffer + batch * evictions(length)
}

/** The rules of [manifest]'s package with a context of [context] positions (runtime/recompute.py rules). */
fun recomputeRules(manifest: Manifest, context: Int): List<RecomputeRule> = listOfNotNull(
    manifest.ropeSwitch?.let { RopeSwitch(it) },
    manifest.contract.window?.let { Window(KvGrowth.windowBuffer(it, context), it) })

class RecomputingBackend(private val inner: Backend, val rules: List<RecomputeRule>) : Backend by inner {
    private val ids = IntArray(inner.capacity)  // the tokens of every cached position
    private var logical = 0  // positions the caller sees; the inner cache holds them all, or none while a
    // truncation that could not be done in place waits for the next step (stale: inner.length != logical)

    override val rollbackLimit: Int? get() = rules.mapNotNull { it.limit(logical) }.minOrNull()

    override val length: Int get() = logical

    override fun truncate(length: Int) {
        require(length in 0..logical) { "cannot truncate a cache of $logical positions to $length" }
        val stale = inner.length != logical
        if (stale || length == 0 || !rules.all { it.exact(logical, length) }) {
            inner.truncate(0)  // fed again with the next step
        } else {
            inner.truncate(length)
        }
        logical = length
    }

    override fun step(ids: IntArray): FloatArray = feed(ids) { inner.step(it) }

    override fun stepAll(ids: IntArray, keep: Int): Array<FloatArray> = feed(ids) { inner.stepAll(it, keep) }

    private fun <T> feed(ids: IntArray, run: (IntArray) -> T): T {
        val past = logical
        require(ids.isNotEmpty()) { "a step needs at least one token id" }
        require(past + ids.size <= capacity) {
            "${ids.size} more tokens do not fit: $past of $capacity cache positions are in use" }
        val fed = if (inner.length != past || rules.any { it.crosses(past, ids.size) }) {  // stale, or recompute
            inner.truncate(0)  // stale until the run below succeeds (an interrupted or failed step leaves it so)
            this.ids.copyOf(past) + ids  // the whole sequence, computed as a fresh run would
        } else ids
        val out = try {
            run(fed)
        } catch (e: Throwable) {
            if (!rules.all { it.exact(past + ids.size, past) }) inner.truncate(0)  // its runs may have evicted rows
            throw e
        }
        ids.copyInto(this.ids, past)
        logical = past + ids.size
        return out
    }

    companion object {
        /** [backend] wrapped for [manifest]'s LongRoPE switch and sliding window, or as it is with neither. */
        fun wrap(backend: Backend, manifest: Manifest): Backend =
            recomputeRules(manifest, backend.capacity).let { if (it.isEmpty()) backend else RecomputingBackend(backend, it) }
    }
}
