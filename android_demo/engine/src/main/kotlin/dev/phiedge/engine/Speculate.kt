package dev.phiedge.engine

import kotlin.math.pow

/**
 * Drafts for exact speculative decoding by prompt lookup (runtime/speculate.py): the tokens that followed the
 * most recent earlier occurrence of the text's last n tokens (n = 3, 2, 1). The loop verifies them in one
 * Backend.stepAll and keeps what the sampler agrees with, so the text is the same as without drafts.
 *
 * How many to draft (K) comes from the verify cost line, cost(S) = cost(1) (1 + c (S - 1)), and the decayed rate a
 * at which drafts were kept: K maximizes (1 + a + .. + a^K) / (1 + c K) against 1 for a plain step, so drafting
 * stops where it would cost more than it saves, pausing 1, 2, 4 .. 32 steps and probing with one draft.
 * verifyCost measures c on a backend; GenerationConfig.draftCost fixes it (null: measured once per Generator).
 */
class NgramDrafter(val maxTokens: Int, ids: IntArray = IntArray(0), val cost: Double = DEFAULT_COST) {
    private val ids = ArrayList<Int>()
    private val after = HashMap<List<Int>, Int>()  // n-gram -> where the token after its latest occurrence is
    private var keptWeight = PRIOR_ACCEPTANCE * PRIOR_WEIGHT  // decayed counts: drafts kept, trials
    private var triedWeight = PRIOR_WEIGHT
    private var idle = 0  // plain-step decisions in a row
    private var pause = 0  // decode steps left without drafting

    init {
        require(maxTokens >= 1) { "draft tokens must be >= 1, got $maxTokens" }
        require(cost >= 0 && cost.isFinite()) { "the verify cost per drafted token must be >= 0, got $cost" }
        extend(ids)
    }

    val acceptance: Double get() = keptWeight / triedWeight
    val k: Int get() = bestK(acceptance, cost, maxTokens)

    fun extend(tokens: IntArray) {
        for (token in tokens) {
            val p = ids.size
            for (n in 1..minOf(MAX_NGRAM, p)) after[ids.subList(p - n, p).toList()] = p
            ids.add(token)
        }
    }

    fun propose(limit: Int): IntArray {
        var count: Int
        if (pause > 0) {
            pause--
            count = if (pause == 0) 1 else 0  // the probe
        } else {
            count = bestK(acceptance, cost, minOf(maxTokens, limit))
            if (count == 0 && limit >= 1) {
                pause = minOf(MAX_PAUSE, 1 shl minOf(idle, 30))
                idle++
                return IntArray(0)
            }
        }
        count = minOf(count, limit)
        if (count < 1) return IntArray(0)
        for (n in minOf(MAX_NGRAM, ids.size) downTo 1) {
            val at = after[ids.subList(ids.size - n, ids.size).toList()] ?: continue
            return IntArray(minOf(count, ids.size - at)) { ids[at + it] }
        }
        return IntArray(0)
    }

    fun feedback(drafted: Int, accepted: Int) {
        keptWeight = DECAY * keptWeight + accepted
        triedWeight = DECAY * triedWeight + accepted + (if (accepted < drafted) 1 else 0)
        if (bestK(acceptance, cost, maxTokens) > 0) { idle = 0; pause = 0 }  // drafting pays again
    }

    companion object {
        const val MAX_NGRAM = 3
        const val MAX_PAUSE = 32
        const val DEFAULT_COST = 0.25  // c where it cannot be measured: phi-1.5 size, int4 b128, 2 x86 cores
        const val PRIOR_ACCEPTANCE = 0.6
        const val PRIOR_WEIGHT = 2.0
        const val DECAY = 0.8
        val COST_SIZES = intArrayOf(1, 2, 5, 9)
        val DRAFTS = listOf("none", "ngram")

        /** Tokens a verify of k drafts yields when each is kept with probability a until the first miss. */
        fun expectedTokens(a: Double, k: Int): Double = if (a >= 1) k + 1.0 else (1 - a.pow(k + 1)) / (1 - a)

        /** The draft count 0 .. most with the most tokens per unit of step time (0: a plain step). */
        fun bestK(a: Double, cost: Double, most: Int): Int {
            var best = 0
            var value = 1.0
            for (k in 1..most) {
                val v = expectedTokens(a, k) / (1 + cost * k)
                if (v > value * (1 + 1e-9)) { best = k; value = v }
            }
            return best
        }

        /**
         * c of the cost line on [backend]: steps of each size in COST_SIZES from its current length (median of
         * [repeats], each taken back), fitted through cost(S) / cost(1) = 1 + c (S - 1); null when the cache has no
         * room for the largest step or it could not be taken back in place.
         */
        fun verifyCost(backend: Backend, repeats: Int = 3, clock: () -> Long = System::nanoTime): Double? {
            val start = backend.length
            val room = minOf(backend.capacity, backend.rollbackLimit ?: Int.MAX_VALUE)
            if (start + COST_SIZES.max() >= room) return null
            val times = HashMap<Int, Double>()
            for (size in COST_SIZES) {
                val runs = ArrayList<Long>()
                repeat(repeats + 1) {  // the first run of a size warms its buffers up
                    val t = clock()
                    if (size > 1) backend.stepAll(IntArray(size)) else backend.step(IntArray(1))
                    runs.add(clock() - t)
                    backend.truncate(start)
                }
                times[size] = median(runs.drop(1).map { it.toDouble() })
            }
            var num = 0.0
            var den = 0.0
            for (size in COST_SIZES) if (size > 1) {
                num += (times.getValue(size) / times.getValue(1) - 1) * (size - 1)
                den += (size - 1).toDouble() * (size - 1)
            }
            return maxOf(0.0, num / den)
        }

        private fun median(values: List<Double>): Double {
            val s = values.sorted()
            return if (s.size % 2 == 1) s[s.size / 2] else (s[s.size / 2 - 1] + s[s.size / 2]) / 2
        }
    }
}
