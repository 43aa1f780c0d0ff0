"""Rebuilds imagenet_to_{voc,coco,nus_wide}.json from WordNet 3.0 (not used at run time).

Run: python build_imagenet_mappings.py WORDNET_DIR [OUT_DIR]
  WORDNET_DIR: WordNet 3.0 database files (Debian's `wordnet-base` package: /usr/share/wordnet).
  ImageNet classes (index, wnid, name) come from imagenet_classes.tsv beside this file; ImageNet
  wnids are WordNet 3.0 noun offsets, so each class sits in the WordNet noun hierarchy.
A label collects every ImageNet class whose WordNet hypernym closure reaches one of its `roots`
(synsets named lemma.n.NN), plus the hand-picked `add` classes, minus `drop`. The SPEC below is the
hand review: roots chosen per label, scene-like or part-of classes added where the ImageNet class
shows the label, classes WordNet files elsewhere dropped. A label with no class is listed as unmapped.
"""
import json
import os
import sys

VOC = {
  "aeroplane": {"roots": ["airplane.n.01"], "add": ["n04592741"]},  # wing: photos of planes
  "bicycle": {"roots": ["bicycle.n.01"]},
  "bird": {"roots": ["bird.n.01"]},
  "boat": {"roots": ["vessel.n.02"]},
  "bottle": {"roots": ["bottle.n.01"]},
  "bus": {"roots": ["bus.n.01"]},
  "car": {"roots": ["car.n.01"], "add": ["n03977966"]},  # VOC's car includes vans
  "cat": {"roots": ["domestic_cat.n.01"]},
  "chair": {"roots": ["chair.n.01"]},
  "cow": {"roots": ["cattle.n.01"], "add": ["n03868242"]},  # oxcart
  "diningtable": {"roots": ["dining_table.n.01"]},
  "dog": {"roots": ["dog.n.01"]},
  "horse": {"roots": ["horse.n.01"], "add": ["n03538406"]},  # horse cart
  "motorbike": {"roots": ["motorcycle.n.01", "motor_scooter.n.01", "moped.n.01"]},
  "person": {"roots": ["person.n.01"]},
  "pottedplant": {"roots": ["pot.n.04"]},
  "sheep": {"roots": ["sheep.n.01"]},
  "sofa": {"roots": ["sofa.n.01"]},
  "train": {"roots": ["train.n.01", "locomotive.n.01"],
            "add": ["n03895866", "n03393912", "n04335435"]},  # passenger car, freight car, streetcar
  "tvmonitor": {"roots": ["television_receiver.n.01"],
                "add": ["n03782006", "n04152593", "n03180011"]},  # monitor, CRT screen, desktop computer
}

COCO = {
  "person": {"roots": ["person.n.01"]},
  "bicycle": VOC["bicycle"], "car": VOC["car"], "motorcycle": VOC["motorbike"],
  "airplane": VOC["aeroplane"], "bus": VOC["bus"], "train": VOC["train"],
  "truck": {"roots": ["truck.n.01"], "drop": ["n03977966", "n03770679"]},  # police van, minivan: car
  "boat": VOC["boat"],
  "traffic light": {"roots": ["traffic_light.n.01"]},
  "fire hydrant": {}, "stop sign": {},
  "parking meter": {"roots": ["parking_meter.n.01"]},
  "bench": {"roots": ["bench.n.01"]},
  "bird": VOC["bird"], "cat": VOC["cat"], "dog": VOC["dog"], "horse": VOC["horse"],
  "sheep": VOC["sheep"], "cow": VOC["cow"],
  "elephant": {"roots": ["elephant.n.01"]},
  "bear": {"roots": ["bear.n.01"]},
  "zebra": {"roots": ["zebra.n.01"]},
  "giraffe": {},
  "backpack": {"roots": ["backpack.n.01"]},
  "umbrella": {"roots": ["umbrella.n.01"]},
  "handbag": {"add": ["n04026417"]},  # purse
  "tie": {"roots": ["necktie.n.01", "bow_tie.n.01"]},
  "suitcase": {}, "frisbee": {},
  "skis": {"roots": ["ski.n.01"]},
  "snowboard": {},
  "sports ball": {"roots": ["ball.n.01"], "drop": ["n04023962"]},  # punching bag
  "kite": {},  # ImageNet's kite is the bird
  "baseball bat": {}, "baseball glove": {}, "skateboard": {}, "surfboard": {},
  "tennis racket": {"roots": ["racket.n.04"]},
  "bottle": VOC["bottle"],
  "wine glass": {"add": ["n07892512"]},  # red wine: served in wine glasses
  "cup": {"roots": ["mug.n.04"], "add": ["n07930864", "n03733805"]},  # cup, measuring cup
  "fork": {},
  "knife": {"roots": ["knife.n.01"], "drop": ["n03658185"]},  # letter opener
  "spoon": {"roots": ["spoon.n.01"]},
  "bowl": {"roots": ["bowl.n.03"]},
  "banana": {"roots": ["banana.n.02"]},
  "apple": {"roots": ["apple.n.01"]},
  "sandwich": {"roots": ["sandwich.n.01"], "drop": ["n07697537"]},  # hot dog is its own label
  "orange": {"roots": ["orange.n.01"]},
  "broccoli": {"roots": ["broccoli.n.02"]},
  "carrot": {},
  "hot dog": {"add": ["n07697537"]},
  "pizza": {"roots": ["pizza.n.01"]},
  "donut": {}, "cake": {},
  "chair": VOC["chair"], "couch": VOC["sofa"], "potted plant": VOC["pottedplant"],
  "bed": {"roots": ["bed.n.01", "baby_bed.n.01"]},
  "dining table": VOC["diningtable"],
  "toilet": {"add": ["n04447861"]},  # toilet seat
  "tv": {"roots": ["television_receiver.n.01"], "add": ["n03782006", "n04152593"]},
  "laptop": {"roots": ["laptop.n.01"], "add": ["n03832673"]},  # notebook computer
  "mouse": {"roots": ["mouse.n.04"]},
  "remote": {"roots": ["remote_control.n.01"]},
  "keyboard": {"roots": ["computer_keyboard.n.01", "keyboard.n.01"]},
  "cell phone": {"roots": ["cellular_telephone.n.01"]},
  "microwave": {"roots": ["microwave.n.02"]},
  "oven": {"add": ["n04330267"]},  # stove
  "toaster": {"roots": ["toaster.n.02"]},
  "sink": {"add": ["n04553703"]},  # washbasin
  "refrigerator": {"add": ["n04070727"]},
  "book": {"add": ["n07248320", "n06596364"]},  # book jacket, comic book
  "clock": {"roots": ["clock.n.01"]},
  "vase": {"roots": ["vase.n.01"]},
  "scissors": {},
  "teddy bear": {"roots": ["teddy.n.01"]},
  "hair drier": {"roots": ["hand_blower.n.01"]},
  "toothbrush": {},
}

NUS_WIDE = {
  "airport": {}, "animal": {"roots": ["animal.n.01"]},
  "beach": {"add": ["n09428293", "n09421951"]},  # seashore, sandbar
  "bear": COCO["bear"], "birds": VOC["bird"], "boats": VOC["boat"], "book": COCO["book"],
  "bridge": {"roots": ["bridge.n.01"]},
  "buildings": {"roots": ["building.n.01"], "drop": ["n03529860"]},  # home theater
  "cars": VOC["car"], "castle": {"roots": ["castle.n.02"]}, "cat": VOC["cat"], "cityscape": {},
  "clouds": {},
  "computer": {"roots": ["computer.n.01"], "drop": ["n04238763", "n06359193"]},  # slide rule, web site
  "coral": {"roots": ["coral.n.04"], "add": ["n09256479"]},  # coral reef
  "cow": VOC["cow"], "dancing": {}, "dog": VOC["dog"], "earthquake": {}, "elk": {},
  "fire": {}, "fish": {"roots": ["fish.n.01"]}, "flags": {"roots": ["flagpole.n.02"]},
  "flowers": {"roots": ["flower.n.01"]},
  "food": {"roots": ["food.n.01", "food.n.02"], "drop": ["n07565083", "n07802026"]},  # menu, hay
  "fox": {"roots": ["fox.n.01"]}, "frost": {}, "garden": {}, "glacier": {}, "grass": {},
  "harbor": {"add": ["n03216828", "n02894605"]},  # dock, breakwater
  "horses": VOC["horse"], "house": {"roots": ["house.n.01"]},
  "lake": {"add": ["n09332890"]},  # lakeside
  "leaf": {}, "map": {},
  "military": {"roots": ["military_vehicle.n.01", "weapon.n.01"], "add": ["n03763968"],  # uniform
               "drop": ["n02879718", "n04086273"]},  # archery bow, revolver
  "moon": {}, "mountain": {"add": ["n09193705", "n09472597"]},  # alp, volcano
  "nighttime": {}, "ocean": {}, "person": VOC["person"], "plane": VOC["aeroplane"],
  "plants": {"roots": ["plant.n.02"], "add": ["n03991062"]},  # + flowerpot
  "police": {"add": ["n03977966"]},  # police van
  "protest": {}, "railroad": VOC["train"], "rainbow": {}, "reflection": {}, "road": {},
  "rocks": {}, "running": {}, "sand": {"add": ["n09421951"]},  # sandbar
  "sign": {"add": ["n06794110"]},  # street sign
  "sky": {}, "snow": {}, "soccer": {"roots": ["soccer_ball.n.01"]},
  "sports": {"roots": ["sports_equipment.n.01", "ball.n.01"], "add": ["n04039381", "n04228054"],
             "drop": ["n03445924"]},  # + racket, ski; - golfcart
  "statue": {}, "street": {}, "sun": {}, "sunset": {}, "surf": {}, "swimmers": {}, "tattoo": {},
  "temple": {"roots": ["place_of_worship.n.01"]}, "tiger": {"roots": ["tiger.n.02"]},
  "tower": {"roots": ["tower.n.01"], "add": ["n04562935"]},  # water tower
  "town": {}, "toys": {"roots": ["plaything.n.01"]},
  "train": VOC["train"], "tree": {}, "valley": {"add": ["n09468604"]},
  "vehicle": {"roots": ["vehicle.n.01"], "drop": ["n03773504"]},  # missile
  "water": {}, "waterfall": {},
  "wedding": {"add": ["n10148035"]},  # groom
  "whales": {"roots": ["whale.n.02"]},
  "window": {"add": ["n04589890", "n04590129"]},  # window screen, window shade
  "zebra": COCO["zebra"],
}


def read_wordnet(wordnet_dir):
  """-> ({offset: [hypernym offsets]}, {lemma: [offsets in sense order]}) for nouns."""
  hypernyms, senses = {}, {}
  with open(os.path.join(wordnet_dir, "data.noun"), encoding="latin-1") as f:
    for line in f:
      if line.startswith(" "):
        continue
      parts = line.split(" | ")[0].split()
      words = int(parts[3], 16)
      at = 4 + 2 * words
      pointers = int(parts[at])
      ups = []
      for i in range(pointers):
        symbol, target, pos = parts[at + 1 + 4 * i: at + 4 + 4 * i]
        if symbol in ("@", "@i") and pos == "n":
          ups.append(target)
      hypernyms[parts[0]] = ups
  with open(os.path.join(wordnet_dir, "index.noun"), encoding="latin-1") as f:
    for line in f:
      if line.startswith(" "):
        continue
      parts = line.split()
      count = int(parts[2])
      senses[parts[0]] = parts[-count:]
  return hypernyms, senses


def closure(offset, hypernyms):
  """Every ancestor of `offset`, itself included."""
  seen, todo = set(), [offset]
  while todo:
    o = todo.pop()
    if o not in seen:
      seen.add(o)
      todo.extend(hypernyms.get(o, []))
  return seen


def build(spec, hypernyms, senses, classes):
  """-> (labels: {label: [[index, wnid, name], ...]}, unmapped: [label, ...])."""
  ancestors = {wnid: closure(wnid[1:], hypernyms) for wnid, _ in classes}
  index = {wnid: i for i, (wnid, _) in enumerate(classes)}
  labels, unmapped = {}, []
  for label, rule in spec.items():
    roots = set()
    for name in rule.get("roots", []):
      lemma, _, sense = name.rsplit(".", 2)
      roots.add(senses[lemma][int(sense) - 1])
    chosen = {w for w, _ in classes if ancestors[w] & roots} | set(rule.get("add", []))
    chosen -= set(rule.get("drop", []))
    if not chosen:
      unmapped.append(label)
      continue
    labels[label] = [[index[w], w, classes[index[w]][1]] for w in sorted(chosen, key=index.get)]
  return labels, unmapped


def dumps(doc):
  """JSON with one ImageNet class per line, so a reviewer reads (and diffs) the mapping easily."""
  lines = ["{"] + [f" {json.dumps(k)}: {json.dumps(doc[k])}," for k in ("about", "dataset")]
  lines.append(' "labels": {')
  labels = list(doc["labels"].items())
  for n, (label, entries) in enumerate(labels):
    lines.append(f"  {json.dumps(label)}: [")
    lines += [f"   {json.dumps(e)}," for e in entries[:-1]] + [f"   {json.dumps(entries[-1])}"]
    lines.append("  ]" + ("," if n < len(labels) - 1 else ""))
  lines += [" },", f' "unmapped": {json.dumps(doc["unmapped"])}', "}"]
  return "\n".join(lines) + "\n"


def main(argv):
  wordnet_dir = argv[1]
  here = os.path.dirname(os.path.abspath(__file__))
  out_dir = argv[2] if len(argv) > 2 else here
  with open(os.path.join(here, "imagenet_classes.tsv")) as f:
    classes = [tuple(line.rstrip("\n").split("\t")[1:3]) for line in f][1:]
  hypernyms, senses = read_wordnet(wordnet_dir)
  for dataset, spec in (("voc", VOC), ("coco", COCO), ("nus_wide", NUS_WIDE)):
    labels, unmapped = build(spec, hypernyms, senses, classes)
    doc = {
      "about": ("ImageNet-1k class -> %s label, for the no-fine-tuning baseline. Built by "
                "build_imagenet_mappings.py from WordNet 3.0 hypernyms (a label takes every ImageNet "
                "class below its root synsets) and reviewed by hand (added/dropped classes are in that "
                "file's SPEC). Entries: [ImageNet index (Keras order = sorted wnids), wnid, name]. "
                "'unmapped' labels have no ImageNet counterpart: the baseline leaves them out of "
                "its means." % dataset),
      "dataset": dataset, "labels": labels, "unmapped": unmapped,
    }
    with open(os.path.join(out_dir, f"imagenet_to_{dataset}.json"), "w") as f:
      f.write(dumps(doc))
    print(dataset, len(labels), "mapped,", len(unmapped), "unmapped")


if __name__ == "__main__":
  main(sys.argv)
