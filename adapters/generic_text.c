/*
 * generic_text.c - the generic text of collateral protection (kl_weight,
 * docs/TUNING.md): short chat turns in the chat template and short prose,
 * written for rwkvd (no outside source), plain ASCII so that any tokenizer
 * encodes it. A tuned state is kept close to the base model on these
 * positions. No piece is one of the collateral prompts that measure the effect
 * (eval/collateral/): the protection must be shown on text it was not fitted to.
 */
#include "rk_adapters.h"

#include <stdlib.h>
#include <string.h>

static const char *const pieces[] = {
    "User: What is the capital of Portugal?\n\nAssistant: The capital of Portugal is "
    "Lisbon.\n\n",
    "User: What color is a banana?\n\nAssistant: A banana is yellow.\n\n",
    "User: How many legs does a horse have?\n\nAssistant: A horse has four legs.\n\n",
    "User: What do you call a baby cat?\n\nAssistant: A baby cat is called a kitten.\n\n",
    "User: What is ice?\n\nAssistant: Ice is water that has frozen because it is very "
    "cold.\n\n",
    "User: Good morning!\n\nAssistant: Good morning! How can I help you today?\n\n",
    "User: What is 4 plus 5?\n\nAssistant: 4 plus 5 is 9.\n\n",
    "User: Where does the sun rise?\n\nAssistant: The sun rises in the east.\n\n",
    "User: What is the opposite of wet?\n\nAssistant: The opposite of wet is dry.\n\n",
    "User: Why do we sleep?\n\nAssistant: We sleep so that the body and the mind can "
    "rest.\n\n",
    "User: Thank you!\n\nAssistant: You are welcome. Have a nice day!\n\n",
    "User: What is a river?\n\nAssistant: A river is a long stream of water that flows to "
    "the sea.\n\n",
    "User: Which animal gives us wool?\n\nAssistant: Sheep give us wool.\n\n",
    "User: What do plants need to grow?\n\nAssistant: Plants need water, light and soil "
    "to grow.\n\n",
    "User: How many months are in a year?\n\nAssistant: There are twelve months in a "
    "year.\n\n",
    "User: What is a tree?\n\nAssistant: A tree is a tall plant with a trunk, branches "
    "and leaves.\n\n",
    "Tom had a red ball. Every day he took it to the park and played with his friend "
    "Sam. One day the ball rolled into the pond, and a kind duck pushed it back.\n\n",
    "The little bird sat on a branch and sang a song. The wind was soft and the sky was "
    "clear. Soon her mother came home with food.\n\n",
    "Lily wanted to bake a cake for her grandmother. She mixed flour, eggs and sugar, "
    "and her father helped her with the oven.\n\n",
    "Once there was a small boat on a wide lake. A fisherman lived in it. Each morning "
    "he sailed out before the sun came up.\n\n",
    "The children walked to school in the rain. They laughed and jumped over the "
    "puddles, and their boots were wet all day.\n\n",
    "A fox looked at the grapes high on the vine. He jumped and jumped but could not "
    "reach them, so he walked away.\n\n",
    "It was late in the evening when the guests arrived. The house was warm, and a "
    "long table stood ready in the hall.\n\n",
    "She read the letter twice before she put it down. Her brother was coming home "
    "after many years at sea.\n\n",
    "The garden was full of roses in June. The old gardener worked there every "
    "morning and spoke to no one.\n\n",
    "Anna found a key under the stone by the gate. She did not know which door it "
    "opened, so she kept it in her pocket.\n\n",
    "The train left the station at noon. Through the window Ben saw fields, cows and "
    "a small white church.\n\n",
    "Snow fell all night, and in the morning the village was white and quiet. The "
    "children ran out with their sleds.\n\n",
    "Q: 14 + 23 = ?\nWork: 4+3=7, write 7; 1+2=3, write 3.\nA: 37\n\n",
    "Copy: m7q2z\nOutput: m7q2z\n\n",
    "window -> WINDOW\ngarden -> GARDEN\nstone -> STONE\n\n",
    "Sort: 8 3 5\nWork: smallest 3, then 5, then 8.\nA: 3 5 8\n\n",
    "The mouse is in box 41.\nThe shell is in box 7.\nQ: Where is the shell?\nA: In box "
    "7.\n\n",
    "User: Write the word \"cloud\" in capital letters.\n\nAssistant: CLOUD\n\n",
    "rain (noun): water falling in drops from clouds in the sky.\n\n",
    "Mrs. Hill said at dinner that the new family at the hall had two daughters and a "
    "great deal of money, and nobody talked of anything else.\n\n",
};
#define N_PIECES (sizeof pieces / sizeof pieces[0])

const char *const *rk_generic_text(size_t *n)
{
    *n = N_PIECES;
    return pieces;
}

int rk_generic_dataset(const struct rk_tokenizer *tok, struct rk_dataset **out)
{
    struct rk_dataset *d = NULL;
    uint32_t *ids = NULL;
    size_t cap = 0;
    int rc = rk_dataset_create(&d);
    *out = NULL;
    for (size_t i = 0; rc == RK_OK && i < N_PIECES; i++) {
        size_t len = strlen(pieces[i]), n = 0;
        if (len > cap) {
            uint32_t *p = realloc(ids, len * sizeof *ids);
            if (!p) {
                rc = RK_ENOMEM;
                break;
            }
            ids = p;
            cap = len;
        }
        if ((rc = rk_tok_encode(tok, pieces[i], len, ids, cap, &n)) == RK_OK && n >= 2)
            rc = rk_dataset_add(d, ids, NULL, n);
    }
    free(ids);
    if (rc != RK_OK) {
        rk_dataset_free(d);
        return rc;
    }
    *out = d;
    return RK_OK;
}
