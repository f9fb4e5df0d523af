package dev.phiedge.engine

/**
 * A backend for LongRoPE packages (manifest "rope_switch"), as runtime/longrope.py and js/longrope.js: it keeps the
 * cache what a fresh computation of its tokens would hold.
 *
 * The graph rotates with the short tables while a step's total length is at most [switch] and with the long ones
 * after, so the cache is "short" while its length is at most [switch] and "long" beyond. Two moves would mix them:
 *
 *     growing past the switch     length 10, step([a, b, c]) with switch 12: cached keys are short, new ones long
 *                                 -> inner.truncate(0); inner.step(p0 .. p9, a, b, c)
 *     truncating back below it    length 40 (long), truncate(20) with switch 32: a fresh run of 20 tokens is short
 *                                 -> the 20 tokens are fed again, with the next step's ids
 */
class LongRopeBackend(private val inner: Backend, private val switch: Int) : Backend by inner {
    private val ids = IntArray(inner.capacity)  // the tokens of every cached position
    private var logical = 0  // positions the caller sees; the inner cache holds them all, or none while a
    // truncation across the switch waits for the next step (stale: inner.length != logical)

    override val ropeSwitch: Int get() = switch

    override val length: Int get() = logical

    override fun truncate(length: Int) {
        require(length in 0..logical) { "cannot truncate a cache of $logical positions to $length" }
        val stale = inner.length != logical
        if (stale || length == 0 || (inner.length > switch && length <= switch)) {
            inner.truncate(0)  // keys rotated with the long tables where a fresh run would use the short ones
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
        val fed = if (inner.length != past || (past in 1..switch && past + ids.size > switch)) {  // stale, crossing
            inner.truncate(0)  // stale until the run below succeeds (an interrupted or failed step leaves it so)
            this.ids.copyOf(past) + ids  // the whole sequence, computed as a fresh run would
        } else ids
        val out = run(fed)
        ids.copyInto(this.ids, past)
        logical = past + ids.size
        return out
    }
}
